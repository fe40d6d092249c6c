"""FSDP2 on 2 gloo ranks where one rank's batch is pure text and the other's holds audio: every rank
runs the same collectives (the text-only rank runs the encoder on a blank clip,
``QwenAudioModule._with_blank_clip``), so the step finishes, and its losses and gradients equal a
single-process run of the same two batches (FSDP averages the ranks' gradients: the single process
takes the mean of the two losses)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from qwen_audio.data.chat_datamodule import ChatDataModule
from qwen_audio.lit.module import QwenAudioModule
from qwen_audio.model import token_losses
from qwen_audio.tokenizer import QwenAudioTokenizer

# A collective out of step makes a rank raise after gloo's own 60 s timeout (init_process_group
# below), which fails the test; this wall-clock backstop also covers spawning two interpreters and
# importing torch and Lightning in each, which takes minutes on a loaded 2-core machine.
TIMEOUT = 600


def batches(tmp_path: Path) -> list[dict]:
    """One batch of a text-only conversation and one of a conversation with a clip."""
    soundfile.write(
        tmp_path / "c.wav", np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000
    )
    found = []
    for name, content in (
        ("text", [{"text": "q0"}]),
        ("audio", [{"audio": "c.wav"}, {"text": "q1"}]),
    ):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": content},
                        {"role": "assistant", "content": "a b"},
                    ]
                }
            )
            + "\n"
        )
        data = ChatDataModule(train=[str(path)], max_length=64, max_tokens=64)
        data.connect(QwenAudioTokenizer.demo(), n_mels=80)
        data.setup("fit")
        found.append(next(iter(data.train_dataloader())))
    assert found[0]["audio_mel"] is None and found[1]["audio_mel"] is not None
    return found


def module(mesh=None) -> QwenAudioModule:
    """The tiny model, seeded, and sharded over ``mesh`` when given.

    The sharding is as ModelParallelStrategy has it.
    """
    torch.manual_seed(0)
    lit = QwenAudioModule(preset="tiny", train="all")
    lit._device_mesh = mesh  # what ModelParallelStrategy hands the module before configure_model
    lit.trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", logger=False
    )  # read for the dtype
    lit.configure_model()
    return lit


def loss_of(lit: QwenAudioModule, batch: dict) -> torch.Tensor:
    return token_losses(lit(batch), batch["labels"]).mean_loss()  # as QwenAudioModule._step


def rank_step(rank: int, init_file: str, data: list[dict], out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    lit = module(
        init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    )
    loss = loss_of(lit, data[rank])
    loss.backward()
    grads = {
        name: p.grad.full_tensor() for name, p in lit.model.named_parameters() if p.grad is not None
    }
    torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_a_text_only_rank_and_an_audio_rank_step_together_as_one_process_would(tmp_path):
    data = batches(tmp_path)
    context = mp.start_processes(
        rank_step,
        args=(str(tmp_path / "init"), data, str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(
            timeout=max(deadline - time.monotonic(), 0.1)
        ):  # True once both have ended
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the two ranks did not finish their step in {TIMEOUT} s (a collective out of step)"
                )
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]

    lit = module()
    single = [loss_of(lit, batch) for batch in data]
    ((single[0] + single[1]) / 2).backward()
    for rank in (0, 1):
        assert ranks[rank]["loss"].item() == pytest.approx(single[rank].item(), rel=1e-6)
    expected = {name: p.grad for name, p in lit.model.named_parameters() if p.grad is not None}
    assert set(ranks[0]["grads"]) == set(expected) and any("audio" in name for name in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
