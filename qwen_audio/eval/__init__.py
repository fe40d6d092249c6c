"""Evaluation on the paper's benchmarks, in one place: the benchmark table with its official prompts and scorers
(:mod:`~qwen_audio.eval.tasks`), the release's metrics (:mod:`~qwen_audio.eval.metrics`), the test-time data module
(:mod:`~qwen_audio.eval.datamodule`), the Lightning evaluation (:mod:`~qwen_audio.eval.module`) and the files it
writes (:mod:`~qwen_audio.eval.report`).

Nothing is imported here, so that reading the metrics or the table does not load Lightning.
"""
