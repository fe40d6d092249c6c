"""Data pipeline: manifests, generated corpora, datasets, duration-bucketed batching.

The generated corpora are in :mod:`.corpus`. The names below are imported on first use
(:mod:`qwen_audio.lazy`): ``qwen_audio.data.dataset`` loads without Lightning, which only
``AudioTextDataModule`` needs.
"""

from qwen_audio.lazy import lazy_exports

_MODULES = {
    "AudioTextDataModule": "qwen_audio.data.datamodule",
    "ManifestEntry": "qwen_audio.data.manifest",
    "ManifestError": "qwen_audio.data.manifest",
    "read_manifest": "qwen_audio.data.manifest",
}
__all__ = sorted(_MODULES)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
