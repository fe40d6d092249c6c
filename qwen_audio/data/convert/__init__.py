"""Importers: data where users keep it -> our JSONL manifests.

The command is ``python -m qwen_audio.data.convert {hf,lhotse}``.

The module :mod:`.hf` reads Hugging Face ``datasets``, either a ``save_to_disk`` folder or parquet
files with an ``Audio`` column. The module :mod:`.lhotse_cuts` reads lhotse CutSet manifests. A
:class:`.fields.Fields` says which column or field holds what. A :class:`.writer.SplitWriter` writes
each split's manifest and audio files with the manifests' error policy.
"""
