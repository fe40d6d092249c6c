"""The parts that both training data modules compose: the model inputs they are connected to, a
split's bucketed sampler and its loader, and the training sampler's position, which a resumed run
restores."""

from __future__ import annotations

from functools import partial

from torch.utils.data import DataLoader, Dataset, Sampler

from qwen_audio.data.collate import collate
from qwen_audio.data.sampler import DurationBucketSampler
from qwen_audio.errors import InputError
from qwen_audio.tokenizer import Tokenizer


class ModelInputs:
    """The model's tokenizer and its encoder's mel bins, which a data module builds examples with.

    The data module does not choose them: :meth:`connect` gives it the model's (as in litgpt), so a
    model loaded from a folder trains on that folder's vocabulary.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner  # the data module's class, named in the error of a use before connect
        self._inputs: tuple[Tokenizer, int] | None = None

    def connect(self, tokenizer: Tokenizer, n_mels: int) -> None:
        self._inputs = tokenizer, n_mels

    @property
    def tokenizer(self) -> Tokenizer:
        return self._connected()[0]

    @property
    def n_mels(self) -> int:
        return self._connected()[1]

    def _connected(self) -> tuple[Tokenizer, int]:
        if self._inputs is None:
            raise RuntimeError(
                f"{self.owner} has no tokenizer yet: call connect(tokenizer, n_mels) with "
                "the model's first (the recipes' CLI does before fit, validate, test and predict)"
            )
        return self._inputs


def bucket_sampler(
    split: str,
    files: list[str],
    lengths: list[list[float]],
    budget: float,
    *,
    weights: list[float] | None,
    num_buckets: int,
    seed: int,
    shuffle: bool,
    sortagrad_epochs: int = 0,
) -> DurationBucketSampler:
    """The split's batch sampler. What it refuses (no file, too few examples for the ranks, bad
    weights) is an input error naming the split's files."""
    if not files:
        raise InputError(
            f"data.{split}: no file given, but the trainer asks for the {split} loader"
        )
    try:
        return DurationBucketSampler(
            lengths,
            budget,
            weights=weights,
            num_buckets=num_buckets,
            shuffle=shuffle,
            sortagrad_epochs=sortagrad_epochs,
            seed=seed,
        )
    except ValueError as err:
        raise InputError(f"data.{split} {files}: {err}") from None


def batch_loader(dataset: Dataset, batches: Sampler, pad_id: int, num_workers: int) -> DataLoader:
    """The loader of ``batches`` of ``dataset``, collated with ``pad_id``."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=partial(collate, pad_id=pad_id),
        persistent_workers=num_workers > 0,
    )


class TrainingPosition:
    """The training sampler's position in batches *consumed* (the loader may have fetched ahead).

    A checkpoint saves it and a resumed run restores it. Strategies that set up optimizers before
    restoring (FSDP2's ``ModelParallelStrategy``) build the sampler first, through
    ``estimated_stepping_batches``: it resumes in place.
    """

    def __init__(self) -> None:
        self.sampler: DurationBucketSampler | None = None
        self._restored: dict | None = None

    def follow(self, sampler: DurationBucketSampler) -> None:
        """Track ``sampler``, the training loader's; it resumes at a restored position."""
        self.sampler = sampler
        self._resume()

    def state_dict(self, trainer) -> dict:
        if self.sampler is None or trainer is None:
            return {}
        state = self.sampler.state_dict()
        state["epoch"] = trainer.current_epoch
        state["batches_done"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_sampler": state}

    def load_state_dict(self, state: dict) -> None:
        self._restored = state.get("train_sampler")
        self._resume()

    def _resume(self) -> None:
        if self._restored is not None and self.sampler is not None:
            self.sampler.load_state_dict(self._restored)
            self._restored = None
