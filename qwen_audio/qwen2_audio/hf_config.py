"""``config.json`` of ``Qwen2AudioForConditionalGeneration`` <-> :class:`QwenAudioConfig`.

The :class:`QwenAudioConfig` side is of family ``qwen2-audio``.

The released files (Qwen/Qwen2-Audio-7B, -Instruct) name only what differs from transformers'
defaults, so the defaults below are part of the format: ``Qwen2Config`` for ``text_config`` and the
``audio_config`` defaults of ``Qwen2AudioConfig`` (transformers 5.24,
``models/qwen2/configuration_qwen2.py`` and ``models/qwen2_audio/configuration_qwen2_audio.py``).
Switches our modules do not implement are refused with the file and key. No torch here: the CLI
reads configs before any model is built.
"""

from __future__ import annotations

from typing import Any

from qwen_audio.config import AudioEncoderConfig, ConfigError, DecoderConfig, QwenAudioConfig

TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
}
AUDIO_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "max_source_positions": 1500,
}
AUDIO_TOKEN_INDEX = (
    151646  # Qwen2AudioConfig.audio_token_index: <|AUDIO|>; <|audio_bos|>, <|audio_eos|> follow it
)
# Switches with the only value our modules implement (``None``: the key must be absent or null).
_FIXED_TEXT = {
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "rope_scaling": None,
    "model_type": "qwen2",
}
_FIXED_AUDIO = {
    "activation_function": "gelu",
    "scale_embedding": False,
    "model_type": "qwen2_audio_encoder",
}


def config_from_hf(source: dict[str, Any], where: str, name: str | None = None) -> QwenAudioConfig:
    """Our config for a ``qwen2_audio`` ``config.json`` (``where`` names it in errors)."""
    text = {**TEXT_DEFAULTS, **source.get("text_config", {})}
    audio = {**AUDIO_DEFAULTS, **source.get("audio_config", {})}
    rope = text.get("rope_parameters") or {}
    theta = rope.get("rope_theta", text["rope_theta"])  # transformers 5 nests it in rope_parameters
    for block, fixed, prefix in (
        (text, _FIXED_TEXT, "text_config."),
        (audio, _FIXED_AUDIO, "audio_config."),
    ):
        for key, expected in fixed.items():
            if block.get(key, expected) != expected:
                raise ConfigError(
                    f"{where}: {prefix}{key}={block[key]!r} is not supported "
                    f"(the release uses {expected!r})"
                )
    if source.get("tie_word_embeddings", False):
        raise ConfigError(
            f"{where}: tie_word_embeddings=true is not supported (the release unties lm_head)"
        )
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"{where}: text_config.rope_parameters.rope_type={rope['rope_type']!r} is not supported "
            "(the release uses 'default')"
        )
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    if kv_heads != heads:
        raise ConfigError(
            f"{where}: text_config.num_key_value_heads={kv_heads} is not supported: the decoder has "
            f"one key/value head per query head ({heads}), as the release"
        )
    head_dim = text["hidden_size"] // heads
    if text.get("head_dim", head_dim) != head_dim:
        raise ConfigError(
            f"{where}: text_config.head_dim={text['head_dim']} must be hidden_size / num_attention_heads "
            f"= {head_dim}"
        )
    if audio["encoder_ffn_dim"] != 4 * audio["d_model"]:
        raise ConfigError(
            f"{where}: audio_config.encoder_ffn_dim={audio['encoder_ffn_dim']} must be 4 * d_model "
            f"= {4 * audio['d_model']} (Whisper's MLP)"
        )
    encoder = AudioEncoderConfig(
        n_mels=audio["num_mel_bins"],
        n_ctx=audio["max_source_positions"],
        n_state=audio["d_model"],
        n_head=audio["encoder_attention_heads"],
        n_layer=audio["encoder_layers"],
        output_dim=text["hidden_size"],
        learned_markers=False,
        mel_lookahead=1,
    )
    decoder = DecoderConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=heads,
        kv_channels=head_dim,
        intermediate_size=2 * text["intermediate_size"],
        layer_norm_epsilon=text["rms_norm_eps"],
        rotary_emb_base=float(theta),
        seq_length=text["max_position_embeddings"],
        use_dynamic_ntk=False,
        use_logn_attn=False,
    )
    return QwenAudioConfig(
        name=name or "qwen2-audio",
        family="qwen2-audio",
        encoder=encoder,
        decoder=decoder,
        audio_start_id=source.get("audio_token_index", AUDIO_TOKEN_INDEX) + 1,
        tokenizer="checkpoint",
    )


def config_to_hf(config: QwenAudioConfig) -> dict[str, Any]:
    """The ``config.json`` transformers writes for this architecture.

    It loads back with :func:`config_from_hf`.
    """
    encoder, decoder = config.encoder, config.decoder
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": "qwen2_audio",
        "audio_token_index": config.audio_start_id - 1,
        "tie_word_embeddings": False,
        "audio_config": {
            **_FIXED_AUDIO,
            "num_mel_bins": encoder.n_mels,
            "encoder_layers": encoder.n_layer,
            "encoder_attention_heads": encoder.n_head,
            "encoder_ffn_dim": 4 * encoder.n_state,
            "d_model": encoder.n_state,
            "max_source_positions": encoder.n_ctx,
        },
        "text_config": {
            **{k: v for k, v in _FIXED_TEXT.items() if v is not None},
            "vocab_size": decoder.vocab_size,
            "hidden_size": decoder.hidden_size,
            "intermediate_size": decoder.intermediate_size // 2,
            "num_hidden_layers": decoder.num_hidden_layers,
            "num_attention_heads": decoder.num_attention_heads,
            "num_key_value_heads": decoder.num_attention_heads,
            "rms_norm_eps": decoder.layer_norm_epsilon,
            "max_position_embeddings": decoder.seq_length,
            "rope_parameters": {"rope_theta": decoder.rotary_emb_base, "rope_type": "default"},
        },
    }
