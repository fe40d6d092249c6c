"""Checkpoint conversions on the command line.

See ``python -m qwen_audio.convert {init-stage1,to-safetensors} --help``.
"""
