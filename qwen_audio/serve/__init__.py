"""An OpenAI-compatible server for Qwen-Audio on LitServe: chat completions with audio parts,
transcriptions with word timestamps, continuous batching whose answers never depend on batch mates.
``python -m qwen_audio.serve --help``.
"""
