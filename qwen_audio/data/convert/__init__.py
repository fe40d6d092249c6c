"""Importers: data where users keep it -> our JSONL manifests (``python -m qwen_audio.data.convert
{hf,lhotse}``).

:mod:`.hf` reads Hugging Face ``datasets`` (a ``save_to_disk`` folder, or parquet files with an
``Audio`` column), :mod:`.lhotse_cuts` reads lhotse CutSet manifests; :class:`.fields.Fields` says
which column or field holds what, and :class:`.writer.SplitWriter` writes each split's manifest and
audio files with the manifests' error policy.
"""
