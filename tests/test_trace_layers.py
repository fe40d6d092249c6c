"""scripts/trace_layers.py: the count of returns, on hand-made layer sequences and the real line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "trace_layers.py"
spec = importlib.util.spec_from_file_location("trace_layers", SCRIPT)
trace_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trace_layers)


def test_runs_of_one_layer_are_one_step_and_each_step_back_is_one_return():
    layers = ["data", "data", "audio", "data", "prompts", "audio", "audio", "data"]
    sequence = trace_layers.layer_runs(layers)
    assert sequence == ["data", "audio", "data", "prompts", "audio", "data"]
    assert trace_layers.returns(sequence) == [2, 4, 5]
    assert trace_layers.returns(["data", "prompts", "tokenizer", "model"]) == []


def test_modules_map_to_the_layers_of_the_import_contracts():
    names = trace_layers.layer_names()
    assert trace_layers.layer_of("qwen_audio.data.dataset", names) == "data"
    assert trace_layers.layer_of("qwen_audio.kernels.mel", names) == "kernels"
    assert trace_layers.layer_of("qwen_audio.whisper_mel", names) == "config : errors : whisper_mel"
    # a family's own module counts as the layer it stands beside
    assert trace_layers.layer_of("qwen_audio.qwen2_audio.tokenizer", names) == "tokenizer"


def test_a_manifest_line_reaches_the_loss_with_at_most_two_returns():
    """Load (audio), prompt (prompts, tokenizer), log-mel (back to audio), batch (back to data)."""
    sequence = trace_layers.layer_runs(trace_layers.traced_layers())
    assert sequence[0] == "data" and sequence[-1] == "model"
    assert len(trace_layers.returns(sequence)) <= 2, sequence
