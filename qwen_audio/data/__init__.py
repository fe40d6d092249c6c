"""Data pipeline: manifests, the embedded demo corpus, datasets, duration-bucketed batching."""

from qwen_audio.data.datamodule import AudioTextDataModule
from qwen_audio.data.manifest import ManifestEntry, ManifestError, read_manifest

__all__ = ["AudioTextDataModule", "ManifestEntry", "ManifestError", "read_manifest"]
