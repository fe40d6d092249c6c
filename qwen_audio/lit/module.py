"""LightningModule for both training stages of Qwen-Audio.

Stage 1 (multi-task pretraining) trains the audio encoder, pool, ln_post and projection with the LLM
frozen. Stage 2 (SFT into Qwen-Audio-Chat) trains the LLM with the encoder frozen. ``train`` picks
the part, so one module serves both recipes. Under Lightning's ``ModelParallelStrategy`` the model
is built on the meta device. Each encoder and decoder block is then sharded with FSDP2
(``fully_shard``) in ``configure_model``.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Literal

import lightning as L
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from qwen_audio.audio import spec_augment
from qwen_audio.checkpoint import (
    check_architecture,
    check_state_dict,
    expected_shapes,
    load_tokenizer,
    read_model_state_dict,
    read_tokenizer,
)
from qwen_audio.config import ConfigError, QwenAudioConfig
from qwen_audio.lengths import MIN_SAMPLES, conv_frames
from qwen_audio.lit.lora import LoraOptions, add_lora, lora_state_dict
from qwen_audio.lit.optim import param_groups, warmup_cosine
from qwen_audio.model import QwenAudio, label_positions, token_losses
from qwen_audio.prompts import IGNORE_INDEX
from qwen_audio.whisper_mel import HOP_LENGTH

Trainable = Literal["encoder", "decoder", "all"]


class QwenAudioModule(L.LightningModule):
    """Trains a :class:`QwenAudio` on batches from :class:`qwen_audio.data.AudioTextDataModule`.

    Args:
        preset: a preset name of :class:`QwenAudioConfig` (``tiny``, ``qwen-audio``, ...).
        train: the part that is optimised, ``encoder`` (stage 1), ``decoder`` (stage 2) or ``all``.
            ``all`` suits a small random decoder, which has no language knowledge to keep.
        init_from: a folder in the released layout whose weights initialise the model (none: random
            init). Its tokenizer is then the model's :attr:`tokenizer` (else the preset's).
        lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio: AdamW and warmup-cosine schedule
            (spec §8).
        layer_decay: layer-wise LR decay over the encoder blocks. Block ``i`` of ``n`` gets
            ``lr * decay**(n-i)``.
        spec_augment: apply SpecAugment ("LibriSpeech Basic") to training mels.
        activation_checkpointing: recompute each block in the backward pass to save memory.
        seed: seeds the SpecAugment masks. The step number is mixed in, so resuming reproduces them.
        lora: train LoRA adapters on the decoder instead of its weights
            (:mod:`qwen_audio.lit.lora`). It needs ``train: decoder``.
    """

    def __init__(
        self,
        preset: str = "tiny",
        train: Trainable = "encoder",
        init_from: str | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        layer_decay: float = 0.95,
        spec_augment: bool = True,
        activation_checkpointing: bool = False,
        seed: int = 0,
        lora: LoraOptions | None = None,
    ) -> None:
        super().__init__()
        if lora is not None and train != "decoder":
            raise ConfigError(
                f"lora adapts the decoder alone: it needs train='decoder', got train={train!r}"
            )
        self.save_hyperparameters()
        # hparams hold plain dicts when LightningCLI or load_from_checkpoint passes them, so keep
        # the dataclass
        self.lora = LoraOptions(**lora) if isinstance(lora, dict) else lora
        self.config = QwenAudioConfig.from_name(preset)
        if init_from:
            check_architecture(init_from, self.config)
        # what the data module is given (``connect``): a released folder trains on its own
        # vocabulary
        self.tokenizer = (
            read_tokenizer(init_from, self.config) if init_from else load_tokenizer(preset=preset)
        )
        self.model: QwenAudio | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = QwenAudio(self.config)
        self.model.set_trainable(
            encoder=self.hparams.train in ("encoder", "all"),
            decoder=self.hparams.train in ("decoder", "all"),
        )
        if self.lora is not None:
            add_lora(self.model, self.lora)
        self.model.set_activation_checkpointing(self.hparams.activation_checkpointing)
        self._encoder_params = sum(p.numel() for p in self.model.encoder.parameters())
        self._decoder_params = (
            sum(p.numel() for p in self.model.parameters()) - self._encoder_params
        )
        if self.device_mesh is not None:
            if self.device_mesh["tensor_parallel"].size() > 1:
                raise ConfigError(
                    "ModelParallelStrategy gave a tensor-parallel group of "
                    f"{self.device_mesh['tensor_parallel'].size()} devices, but this model is sharded with FSDP2 "
                    "only: set the strategy's tensor_parallel_size: 1"
                    " and data_parallel_size: num_nodes x devices (its 'auto' means 1 per node)"
                )
            shard = partial(
                fully_shard,
                mesh=self.device_mesh["data_parallel"],
                mp_policy=MixedPrecisionPolicy(param_dtype=self._compute_dtype()),
            )
            for block in (*self.model.transformer.audio.blocks, *self.model.transformer.h):
                shard(block)
            shard(self.model)

    def _compute_dtype(self) -> torch.dtype | None:
        precision = str(self.trainer.precision)
        return (
            torch.bfloat16
            if precision.startswith("bf16")
            else torch.float16
            if precision.startswith("16")
            else None
        )

    def on_fit_start(self) -> None:
        """Load ``init_from`` into the (possibly sharded) model.

        A resumed run restores its checkpoint instead.

        Rank 0 reads the folder, and the weights are broadcast into each rank's shards. A node thus
        never holds more than one full copy. Keys and shapes are checked against the model first,
        and an error lists any mismatch.
        """
        if not self.hparams.init_from or self.trainer.ckpt_path is not None:
            return
        state = {}
        if self.global_rank == 0:
            state = read_model_state_dict(self.hparams.init_from, self.config)
            if self.lora is not None:
                state = lora_state_dict(self.model, state)
            check_state_dict(expected_shapes(self.model), state, self.hparams.init_from)
        set_model_state_dict(
            self.model,
            state,
            options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=torch.distributed.is_initialized()
            ),
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a resumed checkpoint whose weights do not fit this model.

        The error names the file and every mismatched key.

        A sharded checkpoint holds no ``state_dict`` here. Its shards are checked by
        torch.distributed.checkpoint instead.
        """
        if "state_dict" in checkpoint:
            expected = {f"model.{k}": shape for k, shape in expected_shapes(self.model).items()}
            check_state_dict(
                expected, checkpoint["state_dict"], f"--ckpt_path {self.trainer.ckpt_path}"
            )

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits ``[n, vocab]`` at the positions that predict a label only.

        The positions are those of :func:`label_positions`.
        """
        inputs = batch if batch["audio_mel"] is not None else self._with_blank_clip(batch)
        return self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            audio_mel=inputs["audio_mel"],
            audio_mel_lengths=inputs["audio_mel_lengths"],
            logits_at=label_positions(inputs["labels"]),
        ).logits

    def _with_blank_clip(self, batch: dict) -> dict:
        """A batch without audio, plus one row holding the shortest clip of a blank mel.

        That clip is 30 ms, one audio token.

        Under FSDP every rank must run each sharded encoder block at every step, in the same order.
        The blocks' all-gathers and gradient reduce-scatters wait for all ranks. This row makes a
        batch of pure-text conversations run the encoder. It attends only to itself and has no
        label. The loss is thus unchanged, and the encoder's gradients are zeros.
        """
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        start, frames, width = (
            self.config.audio_start_id,
            MIN_SAMPLES // HOP_LENGTH,
            max(ids.shape[1], 3),
        )
        row = torch.zeros(1, width, dtype=ids.dtype, device=ids.device)
        row[0, :3] = torch.tensor(
            [start, 0, start + 1]
        )  # <audio>, any id (the splice overwrites it), </audio>
        pad = partial(torch.nn.functional.pad, pad=(0, width - ids.shape[1]))
        mel = torch.zeros(
            1,
            self.config.encoder.n_mels,
            2 * conv_frames(frames) + self.config.encoder.mel_lookahead,
            device=ids.device,
        )
        return {
            "input_ids": torch.cat([pad(ids), row]),
            "attention_mask": torch.cat(
                [pad(mask), (torch.arange(width, device=ids.device) < 3)[None].to(mask.dtype)]
            ),
            "labels": torch.cat(
                [pad(labels, value=IGNORE_INDEX), torch.full_like(row, IGNORE_INDEX)]
            ),
            "audio_mel": mel,
            "audio_mel_lengths": torch.tensor([frames], device=ids.device),
        }

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        scores = token_losses(self(batch), batch["labels"])
        loss = scores.mean_loss()
        size = len(batch["task"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        self.log(
            f"{stage}/token_acc", scores.accuracy(), batch_size=size, sync_dist=stage != "train"
        )
        per_task: dict[str, list[int]] = defaultdict(list)
        for row, task in enumerate(batch["task"]):
            per_task[task].append(row)
        for task, rows in per_task.items():
            self.log(
                f"{stage}/loss_{task}",
                scores.mean_loss(rows),
                batch_size=len(rows),
                sync_dist=stage != "train",
            )
            self.log(
                f"{stage}/token_acc_{task}",
                scores.accuracy(rows),
                batch_size=len(rows),
                sync_dist=stage != "train",
            )
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Read by TokenThroughput for MFU: the usual 6 * params * positions (forward + backward),
        # encoder and decoder each over their own positions; attention's quadratic term is left out.
        frames = int(conv_frames(batch["audio_mel_lengths"]).sum())
        positions = int(batch["attention_mask"].sum())
        self.flops_per_batch = 6 * (
            self._decoder_params * positions + self._encoder_params * frames
        )
        if (
            self.hparams.spec_augment and batch["audio_mel"] is not None
        ):  # None: a batch of pure-text conversations
            # Masks drawn from (seed, step), not the global RNG: a resumed run draws the masks it
            # would have drawn.
            generator = torch.Generator().manual_seed(
                self.hparams.seed * 1_000_003 + self.global_step
            )
            masked = spec_augment(
                batch["audio_mel"], batch["audio_mel_lengths"], generator=generator
            )
            batch = {**batch, "audio_mel": masked}
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(
            self.model.named_parameters(),
            hp.lr,
            hp.weight_decay,
            hp.layer_decay,
            self.config.encoder.n_layer,
        )
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, eps=hp.eps)
        total = self.trainer.estimated_stepping_batches
        schedule = partial(
            warmup_cosine,
            warmup_steps=hp.warmup_steps,
            total_steps=total,
            min_ratio=hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
