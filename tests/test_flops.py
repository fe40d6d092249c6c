"""The MFU denominator: dense bf16 peaks looked up by a (mocked) GPU name, checked against NVIDIA's
datasheets (the "with sparsity" BF16 Tensor Core figure halved), and TokenThroughput logging MFU
where Lightning has no peak."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.trainer.states import RunningStage

from qwen_audio.lit import TokenThroughput
from qwen_audio.lit.flops import bf16_peak_flops

CUDA = torch.device("cuda")


@pytest.fixture
def gpu_named(monkeypatch):
    def name(value: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: value)

    return name


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 1979e12 / 2),
        ("NVIDIA H200 NVL", 1671e12 / 2),
        ("NVIDIA H100 80GB HBM3", 1979e12 / 2),
        ("NVIDIA H100 PCIe", 1513e12 / 2),
        ("NVIDIA H100 NVL", 1671e12 / 2),
        ("NVIDIA A100-SXM4-80GB", 624e12 / 2),
        ("Tesla T4", None),
    ],
)
def test_peak_of_a_mocked_device_name(gpu_named, name, peak):
    gpu_named(name)
    found = bf16_peak_flops(CUDA)
    assert found == pytest.approx(peak, rel=2e-3) if peak else found is None


def test_no_peak_on_cpu():
    assert bf16_peak_flops(torch.device("cpu")) is None


def _trainer(precision: str, plugin: Precision) -> SimpleNamespace:
    return SimpleNamespace(
        precision=precision,
        precision_plugin=plugin,
        strategy=SimpleNamespace(root_device=CUDA),
        enable_validation=False,
        world_size=1,
        state=SimpleNamespace(stage=RunningStage.TRAINING),
    )


def test_token_throughput_logs_mfu_on_an_h200(gpu_named):
    gpu_named("NVIDIA H200")
    with pytest.warns(UserWarning, match="FLOPs not found"):
        assert get_available_flops(CUDA, torch.bfloat16) is None  # the gap this closes
    monitor = TokenThroughput(window_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does it warn about it
        monitor.setup(_trainer("bf16-mixed", MixedPrecision("bf16-mixed", "cuda")), None, "fit")
    throughput = monitor._throughputs[RunningStage.TRAINING]
    for step in (1, 2):  # two steps of 1 s, each 989 TFLOP: 100 % of the peak
        throughput.update(time=float(step), batches=step, samples=step, flops=989e12)
    assert throughput.compute()["device/mfu"] == pytest.approx(1.0)


def test_token_throughput_leaves_32_bit_runs_to_lightning(gpu_named):
    gpu_named("NVIDIA H200")
    monitor = TokenThroughput()
    with pytest.warns(UserWarning, match="FLOPs not found"):
        monitor.setup(_trainer("32-true", Precision()), None, "fit")
    assert monitor._throughputs[RunningStage.TRAINING].available_flops is None
