"""Model configuration: plain dataclasses with named presets.

The dataclasses are readable by jsonargparse / LightningCLI. Field names follow the released
``config.json`` (Qwen/Qwen-Audio on the Hugging Face Hub) so a reader of that file finds the same
words here; ``from_hf_config`` / ``to_hf_config`` translate the file's nested ``audio`` block.
Nothing here imports torch: configs are read by the CLI before any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from qwen_audio.errors import InputError

AttentionBackend = Literal[
    "auto", "sdpa", "varlen", "flash_attn"
]  # see qwen_audio.modules.attention
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
Family = Literal["qwen-audio", "qwen2-audio"]


class ConfigError(InputError):
    """A config file or preset name that cannot describe a Qwen-Audio model."""


@dataclass
class AudioEncoderConfig:
    """Whisper-style audio encoder (conv stem, pre-LN blocks), then pooling and projection.

    The blocks are followed by a stride-2 average pool, ``ln_post`` and ``proj``.
    """

    n_mels: int = 80
    n_ctx: int = 1500  # encoder frames after the stride-2 conv stem (30 s)
    n_state: int = 1280
    n_head: int = 20
    n_layer: int = 32
    output_dim: int = 4096  # width of ``proj`` and of the audio BOS/EOS vectors = the LLM width
    layer_norm_eps: float = 1e-5
    # Qwen-Audio learns audio BOS/EOS vectors; Qwen2-Audio's prompt keeps its
    # <|audio_bos|>/<|audio_eos|> tokens.
    learned_markers: bool = True
    # Mel frames past a clip's first 2 * encoder_frames that the conv stem reads: 0 for Qwen-Audio
    # (cut there, conv zero padding); 1 for Qwen2-Audio, whose encoder always reads the clip's whole
    # zero-padded 30 s window.
    mel_lookahead: int = 0

    def __post_init__(self) -> None:
        if self.n_state % self.n_head:
            raise ConfigError(
                f"encoder n_state {self.n_state} is not divisible by n_head {self.n_head}"
            )


@dataclass
class DecoderConfig:
    """Qwen(1) decoder: RMSNorm pre-norm blocks with rotary embeddings.

    Each block has a fused QKV with bias and a SwiGLU MLP.
    """

    vocab_size: int = 155947
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    kv_channels: int = 128  # head dimension
    intermediate_size: int = (
        22016  # the release halves it: w1 and w2 are each intermediate_size // 2 wide
    )
    layer_norm_epsilon: float = 1e-6
    rotary_emb_base: float = 10000.0
    seq_length: int = 2048  # the trained context; dynamic NTK and logN scaling start beyond it
    use_dynamic_ntk: bool = True  # inference only, as released
    use_logn_attn: bool = True  # inference only, as released

    def __post_init__(self) -> None:
        if self.num_attention_heads * self.kv_channels != self.hidden_size:
            raise ConfigError(
                f"decoder num_attention_heads * kv_channels = {self.num_attention_heads} * {self.kv_channels} "
                f"must equal hidden_size {self.hidden_size}"
            )
        if self.intermediate_size % 2:
            raise ConfigError(
                f"decoder intermediate_size {self.intermediate_size} must be even "
                "(w1, w2 take half each)"
            )


@dataclass
class QwenAudioConfig:
    """The whole model. ``audio_start_id`` is ``<audio>``; ``</audio>`` is the next id."""

    name: str = "qwen-audio"
    family: Family = "qwen-audio"  # which checkpoint layout and tokenizer (qwen_audio.qwen2_audio for the successor)
    encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    audio_start_id: int = 155163
    attention_backend: AttentionBackend = "auto"
    # Where the vocabulary comes from, not part of the architecture (so not compared): "released"
    # (qwen.tiktoken), "demo" (the small committed file) or a ranks-file path; for Qwen2-Audio
    # "qwen2-demo", a tokenizer.json path, or "checkpoint" (its folder's tokenizer.json). A
    # released-layout folder brings its own file.
    tokenizer: str = field(default="released", compare=False)

    def __post_init__(self) -> None:
        if self.encoder.output_dim != self.decoder.hidden_size:
            raise ConfigError(
                f"encoder.output_dim ({self.encoder.output_dim}) must equal decoder.hidden_size "
                f"({self.decoder.hidden_size}): audio vectors are spliced into the LLM's embedding sequence"
            )
        if not 0 <= self.audio_start_id < self.decoder.vocab_size - 1:
            raise ConfigError(
                f"audio_start_id {self.audio_start_id} and audio end id {self.audio_start_id + 1} must lie inside "
                f"the vocabulary (vocab_size {self.decoder.vocab_size})"
            )
        if self.family not in ("qwen-audio", "qwen2-audio"):
            raise ConfigError(f"family {self.family!r} is not one of qwen-audio, qwen2-audio")
        if self.encoder.learned_markers != (self.family == "qwen-audio"):
            raise ConfigError(
                f"encoder.learned_markers={self.encoder.learned_markers} does not fit family "
                f"{self.family!r}: Qwen-Audio learns its audio BOS/EOS vectors, Qwen2-Audio keeps the "
                "marker tokens"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention_backend {self.attention_backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
            )

    @property
    def audio_end_id(self) -> int:
        return self.audio_start_id + 1

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> QwenAudioConfig:
        """A preset by name (``qwen-audio``, ``qwen-audio-chat``, ``tiny``).

        ``overrides`` replace its top-level fields.
        """
        if name not in PRESETS:
            raise ConfigError(
                f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
            )
        return dataclasses.replace(PRESETS[name](), **overrides)

    @classmethod
    def from_hf_config(
        cls, source: dict[str, Any] | str | os.PathLike, name: str | None = None
    ) -> QwenAudioConfig:
        """Read the released ``config.json`` (a dict, the file, or the folder holding it).

        The architecture switches the release exposes but never varies (``no_bias``, ``rotary_pct``,
        ``avg_pool``, ``add_audio_bos_eos_token``, ``tie_word_embeddings``) are checked, not stored.
        """
        source, where = read_config_file(source)
        if source.get("model_type") == "qwen2_audio":
            raise ConfigError(
                f"{where} is a Qwen2-Audio config.json: qwen_audio.checkpoint.read_config reads both "
                "families"
            )

        def need(block: dict[str, Any], key: str, prefix: str = "") -> Any:
            if key not in block:
                raise ConfigError(f"{where}: missing key '{prefix}{key}'")
            return block[key]

        audio = need(source, "audio")
        for key, expected in _FIXED_HF_KEYS.items():
            if source.get(key, expected) != expected:
                raise ConfigError(
                    f"{where}: {key}={source[key]!r} is not supported (the release uses {expected!r})"
                )
        for key in ("avg_pool", "add_audio_bos_eos_token"):
            if audio.get(key, True) is not True:
                raise ConfigError(
                    f"{where}: audio.{key}={audio[key]!r} is not supported (the release uses true)"
                )
        encoder = AudioEncoderConfig(**{k: need(audio, k, "audio.") for k in _HF_AUDIO_KEYS})
        decoder = DecoderConfig(
            **{f.name: need(source, f.name) for f in dataclasses.fields(DecoderConfig)}
        )
        folder_name = (
            os.path.basename(os.path.dirname(os.path.abspath(where)))
            if where != "config dict"
            else None
        )
        return cls(
            name=name or folder_name or "qwen-audio",
            encoder=encoder,
            decoder=decoder,
            audio_start_id=need(audio, "audio_start_id", "audio."),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The released ``config.json`` layout (loads back with :meth:`from_hf_config`);
        Qwen-Audio's only, both families' through ``qwen_audio.checkpoint.hf_config``."""
        if self.family != "qwen-audio":
            raise ConfigError(
                f"{self.name} is a {self.family} config: qwen_audio.checkpoint.hf_config writes it"
            )
        audio = {k: getattr(self.encoder, k) for k in _HF_AUDIO_KEYS}
        audio.update(
            avg_pool=True, add_audio_bos_eos_token=True, audio_start_id=self.audio_start_id
        )
        return {
            "architectures": ["QWenLMHeadModel"],
            "model_type": "qwen",
            **dataclasses.asdict(self.decoder),
            **_FIXED_HF_KEYS,
            "max_position_embeddings": self.decoder.seq_length,
            "audio": audio,
        }


def read_config_file(source: dict[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    """A ``config.json`` and the name errors give it.

    ``source`` is the file, or the folder holding it; a dict is passed through.
    """
    if isinstance(source, dict):
        return source, "config dict"
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err


_HF_AUDIO_KEYS = ("n_mels", "n_ctx", "n_state", "n_head", "n_layer", "output_dim")
_FIXED_HF_KEYS: dict[str, Any] = {"no_bias": True, "rotary_pct": 1.0, "tie_word_embeddings": False}


def _qwen_audio() -> QwenAudioConfig:
    # https://huggingface.co/Qwen/Qwen-Audio/blob/main/config.json (layer_norm_epsilon 1e-6 as
    # shipped there)
    return QwenAudioConfig(name="qwen-audio")


def _qwen_audio_chat() -> QwenAudioConfig:
    # https://huggingface.co/Qwen/Qwen-Audio-Chat/blob/main/config.json (same architecture;
    # audio_start_id 155163)
    return QwenAudioConfig(name="qwen-audio-chat")


def _tiny() -> QwenAudioConfig:
    # Tests and CPU demos. vocab 7680 >= the demo tokenizer's 7618 ids, whose last two are <audio>
    # 7616, </audio> 7617. n_ctx stays 1500 so any clip up to 30 s fits, as in the release.
    return QwenAudioConfig(
        name="tiny",
        encoder=AudioEncoderConfig(
            n_mels=80, n_ctx=1500, n_state=64, n_head=4, n_layer=2, output_dim=64
        ),
        decoder=DecoderConfig(
            vocab_size=7680,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            kv_channels=16,
            intermediate_size=256,
        ),
        audio_start_id=7616,
        tokenizer="demo",
    )


def _demo() -> QwenAudioConfig:
    # The README's main job: twice tiny's width, one more encoder block and four decoder blocks.
    # Decoder depth is what lets it align text to audio in minutes: on spoken digits, 300 steps give
    # held-out WER 0.25 with four blocks and 0.60 with two (docs/experiments.md).
    tiny = _tiny()
    return dataclasses.replace(
        tiny,
        name="demo",
        encoder=dataclasses.replace(tiny.encoder, n_state=128, n_layer=3, output_dim=128),
        decoder=dataclasses.replace(
            tiny.decoder,
            hidden_size=128,
            num_hidden_layers=4,
            kv_channels=32,
            intermediate_size=512,
        ),
    )


def _qwen2_audio_7b(name: str = "qwen2-audio-7b") -> QwenAudioConfig:
    # https://huggingface.co/Qwen/Qwen2-Audio-7B/blob/main/config.json: its text_config sets
    # vocab_size 156032, intermediate_size 11008 (ours counts w1 + w2: 22016),
    # max_position_embeddings 8192, rms_norm_eps 1e-5 and leaves the rest to transformers'
    # Qwen2Config defaults (hidden 4096, 32 layers, 32 heads, 32 KV heads, rope_theta 10000, untied
    # head); audio_config and audio_token_index 151646 (<|AUDIO|>) are Qwen2AudioConfig's defaults
    # (Whisper-large-v3 encoder: 128 mel bins, d_model 1280, 20 heads, 32 layers, ffn 5120). No
    # dynamic NTK / logN.
    return QwenAudioConfig(
        name=name,
        family="qwen2-audio",
        encoder=AudioEncoderConfig(n_mels=128, learned_markers=False, mel_lookahead=1),
        decoder=DecoderConfig(
            vocab_size=156032,
            layer_norm_epsilon=1e-5,
            seq_length=8192,
            use_dynamic_ntk=False,
            use_logn_attn=False,
        ),
        audio_start_id=151647,  # <|audio_bos|>; <|audio_eos|> 151648 follows
        tokenizer="checkpoint",
    )


def _qwen2_audio_7b_instruct() -> QwenAudioConfig:
    # https://huggingface.co/Qwen/Qwen2-Audio-7B-Instruct/blob/main/config.json: the same
    # architecture and ids.
    return _qwen2_audio_7b("qwen2-audio-7b-instruct")


def _qwen2_audio_tiny() -> QwenAudioConfig:
    # Tests and CPU demos of the family: tiny's sizes, 128 mel bins, and the committed
    # qwen2_demo_tokenizer.json (the demo BPE's 4096 ranks + the family's six special tokens,
    # <|audio_bos|> 4100, 4102 ids in all).
    tiny, family = _tiny(), _qwen2_audio_7b()
    return dataclasses.replace(
        family,
        name="qwen2-audio-tiny",
        encoder=dataclasses.replace(
            tiny.encoder, n_mels=128, learned_markers=False, mel_lookahead=1
        ),
        decoder=dataclasses.replace(
            tiny.decoder,
            vocab_size=4102,
            layer_norm_epsilon=1e-5,
            seq_length=8192,
            use_dynamic_ntk=False,
            use_logn_attn=False,
        ),
        audio_start_id=4100,
        tokenizer="qwen2-demo",
    )


PRESETS = {
    "qwen-audio": _qwen_audio,
    "qwen-audio-chat": _qwen_audio_chat,
    "tiny": _tiny,
    "demo": _demo,
    "qwen2-audio-7b": _qwen2_audio_7b,
    "qwen2-audio-7b-instruct": _qwen2_audio_7b_instruct,
    "qwen2-audio-tiny": _qwen2_audio_tiny,
}
