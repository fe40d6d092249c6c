"""Duration-bucketed, distributed, resumable batch sampler mixing several manifests by weight.

Why not lhotse or litdata? lhotse's ``DynamicBucketingSampler`` works on its own ``CutSet`` data
model and I/O stack. litdata streams its own optimised chunk format. Either would replace our JSONL
manifest and map-style dataset rather than sample it. What we need (padded-seconds budget, buckets,
equal batch counts per rank, exact mid-epoch resume, a seeded mixture) is a pure function of the
clip durations, the seed and the epoch. It fits in one class.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def pack_batches(
    indices: Sequence[int], durations: Sequence[float], max_seconds: float
) -> list[list[int]]:
    """Cut ``indices`` in order into batches whose padded length stays within ``max_seconds``.

    The padded length is ``len(batch) * longest clip``. The encoder computes the padded batch, so
    this bounds memory and compute.
    """
    batches: list[list[int]] = []
    batch, longest = [], 0.0
    for index in indices:
        duration = durations[index]
        if batch and (len(batch) + 1) * max(longest, duration) > max_seconds:
            batches.append(batch)
            batch, longest = [], 0.0
        batch.append(index)
        longest = max(longest, duration)
    if batch:
        batches.append(batch)
    return batches


def _apportion(shares: np.ndarray, total: int) -> np.ndarray:
    """``total`` split into integers in proportion to ``shares``.

    The split is by largest remainders (ties to the first).
    """
    quotas = shares / shares.sum() * total
    counts = np.floor(quotas).astype(np.int64)
    counts[np.argsort(counts - quotas, kind="stable")[: total - counts.sum()]] += 1
    return counts


class DurationBucketSampler(Sampler[list[int]]):
    """Batch sampler for ``DataLoader(dataset, batch_sampler=sampler)``.

    It yields lists of dataset indices.

    ``durations`` holds one sequence of clip durations (seconds) per manifest. Index ``i`` of
    manifest ``m`` is the global index ``sum(len(durations[k]) for k < m) + i``. This is the
    numbering of ``torch.utils.data.ConcatDataset``.

    An epoch is planned from ``(seed, epoch)`` alone, identically on every rank. Every epoch holds
    the same number of batches, because Lightning reads ``len()`` once and the LR schedule counts on
    it. The plan:

    1. Group all examples into ``num_buckets`` buckets of similar duration (quantiles of all
       durations).
    2. Draw the epoch's examples. Without ``weights``, every example is drawn once. With ``weights``
       (one per manifest), the epoch keeps the total size. It takes ``weight / sum(weights)`` of it
       from each manifest. That share is split over the manifest's buckets in proportion to their
       sizes. Each bucket gets a shuffled pass, repeated when it must be up-sampled and cut short
       when down-sampled.
    3. Shuffle each bucket and cut it into batches of ``max_seconds // longest clip of the bucket``
       examples. The padded length ``len(batch) * longest clip`` thus stays within ``max_seconds``.
    4. Shuffle the batch order. In the first ``sortagrad_epochs`` epochs, keep it instead: shortest
       bucket first, the SortaGrad curriculum of Deep Speech 2, §3.1. Then split the largest batches
       in two until the count divides by the world size. Each rank thus gets the same number of
       batches, with no example dropped or repeated. Only when every batch holds a single example
       and splitting is impossible are the last ``count % world_size`` batches dropped.
    5. Rank ``r`` takes batches ``r, r + world_size, ...``.

    Lightning calls ``set_epoch`` at the start of every epoch on ``loader.batch_sampler.sampler``.
    That is the index sampler of a torch ``BatchSampler``. This class is both, so :attr:`sampler` is
    itself.

    ``state_dict()`` records the epoch and how many batches this rank has yielded. After
    ``load_state_dict``, the next ``iter()`` continues from there. It yields the batches the
    uninterrupted run would have produced. With ``DataLoader`` workers, the loader fetches batches
    ahead. So save the state of batches *consumed*. Build it from the step count
    (``{"epoch": e, "batches_done": steps_in_epoch, ...}``) or use a stateful loader.
    """

    def __init__(
        self,
        durations: Sequence[Sequence[float]],
        max_seconds: float,
        *,
        weights: Sequence[float] | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        sortagrad_epochs: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if world_size is None:
            world_size = (
                dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            )
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if not (
            isinstance(max_seconds, (int, float)) and max_seconds > 0 and math.isfinite(max_seconds)
        ):
            raise ValueError(f"max_seconds must be a positive number, got {max_seconds!r}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if sortagrad_epochs < 0:
            raise ValueError(f"sortagrad_epochs must be >= 0, got {sortagrad_epochs}")
        self.sizes = [len(d) for d in durations]
        self.durations = np.concatenate(
            [np.asarray(d, dtype=np.float64).reshape(-1) for d in durations] or [[]]
        )
        if self.durations.size == 0:
            raise ValueError("durations: no examples to sample")
        bad = np.flatnonzero(~np.isfinite(self.durations) | (self.durations <= 0))
        if bad.size:
            raise ValueError(
                f"durations: example {bad[0]} has duration {self.durations[bad[0]]}; must be > 0"
            )
        too_long = np.flatnonzero(self.durations > max_seconds)
        if too_long.size:
            raise ValueError(
                f"durations: example {too_long[0]} lasts {self.durations[too_long[0]]} s, more than max_seconds="
                f"{max_seconds}; filter such examples out or raise max_seconds"
            )
        self.weights = None if weights is None else self._normalised(weights)
        if self.durations.size < world_size:
            raise ValueError(
                f"{self.durations.size} examples cannot give each of {world_size} ranks a batch"
            )
        self.max_seconds = float(max_seconds)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.sortagrad_epochs = sortagrad_epochs
        edges = np.quantile(self.durations, np.linspace(0, 1, num_buckets + 1)[1:-1])
        self.bucket_of = np.searchsorted(edges, self.durations, side="right")
        buckets = range(int(self.bucket_of.max()) + 1)
        longest = [self.durations[self.bucket_of == b].max(initial=0.0) for b in buckets]
        self.bucket_batch = [
            max(1, int(self.max_seconds // seconds)) if seconds else 1 for seconds in longest
        ]
        self.epoch = 0
        self._resume_at = 0  # batches to skip at the next iter(), set by load_state_dict
        self._yielded = 0  # batches of the current epoch handed out by this rank
        self._plan: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def _normalised(self, weights: Sequence[float]) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.sizes),):
            raise ValueError(
                f"weights: expected one per manifest ({len(self.sizes)}), got {list(weights)}"
            )
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
        if any(size == 0 and weight > 0 for size, weight in zip(self.sizes, w)):
            raise ValueError(
                f"weights: a manifest with no examples has weight > 0: {list(weights)}"
            )
        return w / w.sum()

    @property
    def sampler(self) -> DurationBucketSampler:
        """Where Lightning sets the epoch (``loader.batch_sampler.sampler``).

        This sampler plans indices and batches.
        """
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to plan.

        A pending resume point is kept only for the epoch it was saved in.
        """
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.weights is None:
            return np.arange(self.durations.size)
        manifest_of = np.repeat(np.arange(len(self.sizes)), self.sizes)
        drawn = []
        for manifest, count in enumerate(_apportion(self.weights, self.durations.size)):
            if not count:
                continue
            members = np.flatnonzero(manifest_of == manifest)
            groups = [members[self.bucket_of[members] == b] for b in range(len(self.bucket_batch))]
            for group, quota in zip(
                groups, _apportion(np.array([len(g) for g in groups], dtype=np.float64), count)
            ):
                if quota:
                    passes = [rng.permutation(group) for _ in range(-(-quota // len(group)))]
                    drawn.append(np.concatenate(passes)[:quota])
        return np.concatenate(drawn)

    def _batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch`` in order, a multiple of ``world_size`` of them."""
        rng = np.random.default_rng([self.seed, epoch])
        drawn = self._draw(rng)
        batches: list[list[int]] = []
        for bucket, size in enumerate(self.bucket_batch):
            members = drawn[self.bucket_of[drawn] == bucket]
            if self.shuffle:
                members = rng.permutation(members)
            batches += [members[i : i + size].tolist() for i in range(0, len(members), size)]
        if self.shuffle and epoch >= self.sortagrad_epochs:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._divisible(batches)

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        """Split the largest batches until the count divides by the world size.

        Among equals, the first in order is split first.
        """
        missing = -len(batches) % self.world_size
        heap = [(-len(b), position) for position, b in enumerate(batches) if len(b) > 1]
        heapq.heapify(heap)
        halves: dict[int, list[list[int]]] = {}
        while missing and heap:
            _, position = heapq.heappop(heap)
            batch = batches[position]
            halves[position] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
            missing -= 1
        batches = [part for position, b in enumerate(batches) for part in halves.get(position, [b])]
        return batches[: len(batches) - len(batches) % self.world_size]

    def _rank_batches(self) -> list[list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._batches(self.epoch)[self.rank :: self.world_size])
        return self._plan[1]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (the same on every rank)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self._resume_at = self._resume_at, 0
        for position in range(start, len(batches)):
            self._yielded = (
                position + 1
            )  # counted when handed out, so state_dict() between batches is exact
            yield batches[position]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_done": self._yielded,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_examples": int(self.durations.size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position.

        The sampler must be built on the same data, seed and world size. A state saved after the
        last batch of its epoch resumes at the start of the next epoch, as Lightning does. A loader
        with workers fetches its first batches before Lightning's ``set_epoch`` says so.
        """
        for key in ("seed", "world_size", "num_examples"):
            if key in state and state[key] != self.state_dict()[key]:
                raise ValueError(
                    f"cannot resume: state has {key}={state[key]}, this sampler {self.state_dict()[key]}"
                )
        self.epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):
            self.epoch, done = self.epoch + 1, 0
        self._resume_at = self._yielded = done


class EpochTaggedBatches(Sampler[list[tuple[int, int]]]):
    """The batches of a :class:`DurationBucketSampler`, each index tagged ``(epoch, index)``.

    The epoch is the one the index was planned in. It travels with the index to the worker that
    loads it. A worker's copy of the dataset cannot know the epoch, and a loader fetches ahead into
    the next one. The epoch seeds augmentation
    (:class:`~qwen_audio.data.dataset.AugmentedConcatDataset`). Lightning sets the epoch on
    :attr:`sampler`.
    """

    def __init__(self, sampler: DurationBucketSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, index) for index in batch]
