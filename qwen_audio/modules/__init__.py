"""Plain-torch building blocks of Qwen-Audio: layers, attention, encoder, decoder, audio splice.

They do not use Lightning.
"""

from qwen_audio.modules.attention import AttentionLayout, attention, resolve_attention_backend
from qwen_audio.modules.decoder import KVCache, QwenDecoder
from qwen_audio.modules.encoder import AudioEncoder
from qwen_audio.modules.fusion import AudioSpliceError, splice_audio

__all__ = [
    "AttentionLayout",
    "AudioEncoder",
    "AudioSpliceError",
    "KVCache",
    "QwenDecoder",
    "attention",
    "resolve_attention_backend",
    "splice_audio",
]
