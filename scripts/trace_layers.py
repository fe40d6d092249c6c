"""Count how often one manifest line returns to a layer it already left, on its way to the loss.

The line runs through :func:`~qwen_audio.data.dataset.encode_entry`,
:func:`~qwen_audio.data.collate.collate` and the model's loss, on a tiny model and a 1 s clip made
here. ``sys.setprofile`` records the project's functions in the order of their first call. That is
the order in which a reader who follows the line meets them. Each function's module is mapped to its
layer in the import-linter contracts of ``pyproject.toml``. Runs of one layer are merged. Each step
into a layer that appeared earlier counts as one return.

Usage:
    python scripts/trace_layers.py            # the count, and the layer sequence
    python scripts/trace_layers.py --calls    # also each function, in order, with its layer
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import soundfile
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # trace the checkout this script lives in
FAMILY_MODULES = {
    "qwen_audio.qwen2_audio.tokenizer": "qwen_audio.tokenizer",
    "qwen_audio.qwen2_audio.prompts": "qwen_audio.prompts",
}


def layer_names() -> dict[str, str]:
    """Module prefix -> layer, from the ``layers`` contracts.

    Modules joined by ``|`` are layers of their own. Modules joined by ``:`` share one.
    """
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers: dict[str, str] = {}
    for contract in config["tool"]["importlinter"]["contracts"]:
        for entry in contract.get("layers", []):
            for independent in entry.split("|"):
                modules = [m.strip() for m in independent.split(":")]
                for module in modules:
                    name = " : ".join(m.removeprefix("qwen_audio.") for m in modules)
                    layers.setdefault(module, name)
    return layers


def layer_of(module: str, layers: dict[str, str]) -> str | None:
    module = FAMILY_MODULES.get(module, module)
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


def first_calls(run: Callable[[], None]) -> list[tuple[str, str]]:
    """(module, qualified name) of each project function, in the order of its first call in ``run``.

    Comprehensions and generated dataclass methods are left out: a reader does not follow them.
    Calls made inside the model count as the model: its layers are the network's, not the line's.
    """
    seen: dict[tuple[str, str], None] = {}
    model_depth = [0]

    def profile(frame, event, arg) -> None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("qwen_audio."):
            return
        code = frame.f_code
        if event == "return":
            model_depth[0] -= module == "qwen_audio.model"
        elif event == "call":
            followed = not code.co_name.startswith("<") and "__create_fn__" not in code.co_qualname
            if followed and not model_depth[0]:
                seen.setdefault((module, code.co_qualname), None)
            model_depth[0] += module == "qwen_audio.model"

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return list(seen)


def manifest_line_to_loss(folder: Path) -> Callable[[], None]:
    """One ASR manifest line -> sample -> batch -> loss, on the demo tokenizer and a tiny model."""
    from qwen_audio.config import QwenAudioConfig
    from qwen_audio.data.collate import collate
    from qwen_audio.data.dataset import encode_entry
    from qwen_audio.data.manifest import ManifestEntry
    from qwen_audio.model import QwenAudio
    from qwen_audio.tokenizer import QwenAudioTokenizer

    clip = folder / "clip.wav"
    noise = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    soundfile.write(clip, noise.numpy(), 16000)
    tokenizer = QwenAudioTokenizer.demo()
    model = QwenAudio(QwenAudioConfig.from_name("tiny"))
    entry = ManifestEntry(
        audio=str(clip), task="asr", text="hello world", audio_language="en", text_language="en"
    )

    def run() -> None:
        batch = collate([encode_entry(entry, tokenizer)], tokenizer.eod)
        mel, mel_lengths = batch["audio_mel"], batch["audio_mel_lengths"]
        output = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            audio_mel=mel,
            audio_mel_lengths=mel_lengths,
        )
        loss = output.loss
        assert torch.isfinite(loss)

    return run


def layer_runs(layers: list[str]) -> list[str]:
    """``layers`` with each run of one layer merged into one step."""
    return [layer for index, layer in enumerate(layers) if not index or layers[index - 1] != layer]


def returns(sequence: list[str]) -> list[int]:
    """Indices of the steps of ``sequence`` that enter a layer an earlier step left."""
    return [index for index, layer in enumerate(sequence) if layer in sequence[:index]]


def traced_layers(show_calls: bool = False) -> list[str]:
    """The layer of each project function the manifest line meets, in order."""
    names = layer_names()
    with tempfile.TemporaryDirectory() as folder:
        calls = first_calls(manifest_line_to_loss(Path(folder)))
    layers = []
    for module, name in calls:
        layers.append(layer_of(module, names) or module)
        if show_calls:
            print(f"{layers[-1]:<28} {module}.{name}")
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", action="store_true", help="print each function with its layer")
    args = parser.parse_args()
    sequence = layer_runs(traced_layers(args.calls))
    back = returns(sequence)
    marked = [f"[{layer}]" if index in back else layer for index, layer in enumerate(sequence)]
    print(" -> ".join(marked))
    print(f"returns to a layer already left: {len(back)}")


if __name__ == "__main__":
    main()
