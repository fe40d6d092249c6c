"""Lightning wiring: the training module, its callbacks and optimizer setup.

The model itself knows no Lightning.
"""

from qwen_audio.lit.callbacks import (
    ChatTranscript,
    ExportPretrained,
    TokenThroughput,
    TranscriptionReport,
)
from qwen_audio.lit.module import QwenAudioModule
from qwen_audio.lit.requeue import RequeueOnSignal

__all__ = [
    "ChatTranscript",
    "ExportPretrained",
    "QwenAudioModule",
    "RequeueOnSignal",
    "TokenThroughput",
    "TranscriptionReport",
]
