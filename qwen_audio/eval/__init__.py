"""Evaluation on the paper's benchmarks, in one place.

The benchmark table, with its official prompts and scorers, is :mod:`~qwen_audio.eval.tasks`. The
release's metrics are :mod:`~qwen_audio.eval.metrics`. The test-time data module is
:mod:`~qwen_audio.eval.datamodule`. The Lightning evaluation is :mod:`~qwen_audio.eval.module`. The
files it writes come from :mod:`~qwen_audio.eval.report`.

Nothing is imported here, so that reading the metrics or the table does not load Lightning.
"""
