"""The command-line modules import no heavy library before they are run, so that ``--help`` answers
quickly (issue 19; ``benchmarks_perf/bench_startup.py`` times it). Each import runs in a fresh
interpreter: this one has loaded everything already."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("lightning", "pytorch_lightning", "transformers", "whisper", "litserve")


@pytest.mark.parametrize(
    "module", ["qwen_audio.generate", "qwen_audio.chat", "qwen_audio.serve.__main__"]
)
def test_cli_module_imports_no_heavy_library(module):
    probe = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == []


def test_lazy_packages_still_export_every_name():
    probe = (
        "import sys, qwen_audio.data as d, qwen_audio.eval.metrics as m; "
        "assert 'lightning' not in sys.modules and 'jiwer' not in sys.modules; "
        "from qwen_audio.data import AudioTextDataModule, ManifestEntry, ManifestError, read_manifest; "
        "from qwen_audio.eval.metrics import error_rate, whisper_normalize, bleu; "
        "assert 'lightning' in sys.modules and 'jiwer' in sys.modules; "
        "assert set(d.__all__) <= set(dir(d)) and set(m.__all__) <= set(dir(m)); "
        "assert all(getattr(m, n).__name__ == n for n in m.__all__)"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
    with pytest.raises(AttributeError, match="qwen_audio.data.*no attribute 'nothing'"):
        import qwen_audio.data

        qwen_audio.data.nothing  # noqa: B018
