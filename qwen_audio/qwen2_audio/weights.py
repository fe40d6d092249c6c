"""The weight map between ``Qwen2AudioForConditionalGeneration``'s checkpoint names and our modules.

The map is in litgpt style.

The checkpoint keeps the names of the release (``audio_tower.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.weight``), which transformers still writes.
Every tensor maps one to one except the decoder's separate ``q_proj``/``k_proj``/``v_proj`` (each
with a bias), which are our fused ``c_attn`` split ``[q | k | v]``. Whisper's MLP and LayerNorms
keep their HF names here, our blocks the release's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import torch
from huggingface_hub.constants import SAFETENSORS_INDEX_FILE as SAFE_INDEX

from qwen_audio.errors import CheckpointError

# HF name -> our name; "{}" is the layer index.
WEIGHT_MAP: dict[str, str] = {
    "audio_tower.conv1.weight": "transformer.audio.conv1.weight",
    "audio_tower.conv1.bias": "transformer.audio.conv1.bias",
    "audio_tower.conv2.weight": "transformer.audio.conv2.weight",
    "audio_tower.conv2.bias": "transformer.audio.conv2.bias",
    "audio_tower.embed_positions.weight": "transformer.audio.positional_embedding",
    "audio_tower.layers.{}.self_attn.q_proj.weight": "transformer.audio.blocks.{}.attn.query.weight",
    "audio_tower.layers.{}.self_attn.q_proj.bias": "transformer.audio.blocks.{}.attn.query.bias",
    "audio_tower.layers.{}.self_attn.k_proj.weight": "transformer.audio.blocks.{}.attn.key.weight",
    "audio_tower.layers.{}.self_attn.v_proj.weight": "transformer.audio.blocks.{}.attn.value.weight",
    "audio_tower.layers.{}.self_attn.v_proj.bias": "transformer.audio.blocks.{}.attn.value.bias",
    "audio_tower.layers.{}.self_attn.out_proj.weight": "transformer.audio.blocks.{}.attn.out.weight",
    "audio_tower.layers.{}.self_attn.out_proj.bias": "transformer.audio.blocks.{}.attn.out.bias",
    "audio_tower.layers.{}.self_attn_layer_norm.weight": "transformer.audio.blocks.{}.attn_ln.weight",
    "audio_tower.layers.{}.self_attn_layer_norm.bias": "transformer.audio.blocks.{}.attn_ln.bias",
    "audio_tower.layers.{}.fc1.weight": "transformer.audio.blocks.{}.mlp.0.weight",
    "audio_tower.layers.{}.fc1.bias": "transformer.audio.blocks.{}.mlp.0.bias",
    "audio_tower.layers.{}.fc2.weight": "transformer.audio.blocks.{}.mlp.2.weight",
    "audio_tower.layers.{}.fc2.bias": "transformer.audio.blocks.{}.mlp.2.bias",
    "audio_tower.layers.{}.final_layer_norm.weight": "transformer.audio.blocks.{}.mlp_ln.weight",
    "audio_tower.layers.{}.final_layer_norm.bias": "transformer.audio.blocks.{}.mlp_ln.bias",
    "audio_tower.layer_norm.weight": "transformer.audio.ln_post.weight",
    "audio_tower.layer_norm.bias": "transformer.audio.ln_post.bias",
    "multi_modal_projector.linear.weight": "transformer.audio.proj.weight",
    "multi_modal_projector.linear.bias": "transformer.audio.proj.bias",
    "language_model.model.embed_tokens.weight": "transformer.wte.weight",
    "language_model.model.layers.{}.input_layernorm.weight": "transformer.h.{}.ln_1.weight",
    "language_model.model.layers.{}.self_attn.o_proj.weight": "transformer.h.{}.attn.c_proj.weight",
    "language_model.model.layers.{}.post_attention_layernorm.weight": "transformer.h.{}.ln_2.weight",
    "language_model.model.layers.{}.mlp.up_proj.weight": "transformer.h.{}.mlp.w1.weight",
    "language_model.model.layers.{}.mlp.gate_proj.weight": "transformer.h.{}.mlp.w2.weight",  # w2 is our gate
    "language_model.model.layers.{}.mlp.down_proj.weight": "transformer.h.{}.mlp.c_proj.weight",
    "language_model.model.norm.weight": "transformer.ln_f.weight",
    "language_model.lm_head.weight": "lm_head.weight",
}
QKV = "language_model.model.layers.{}.self_attn.{}_proj.{}"  # layer, q/k/v, weight/bias
FUSED_QKV = "transformer.h.{}.attn.c_attn.{}"  # layer, weight/bias
_QKV_PATTERN = re.compile(
    r"language_model\.model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"
)
_FUSED_PATTERN = re.compile(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)")


def _compile(names: Mapping[str, str]) -> list[tuple[re.Pattern, str]]:
    return [
        (re.compile(re.escape(source).replace(r"\{\}", r"(\d+)")), target)
        for source, target in names.items()
    ]


_TO_OURS = _compile(WEIGHT_MAP)
_TO_HF = _compile({ours: hf for hf, ours in WEIGHT_MAP.items()})


def _rename(key: str, patterns: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in patterns:
        match = pattern.fullmatch(key)
        if match:
            return target.format(*match.groups())
    return None


def key_file(folder: str | os.PathLike, key: str) -> str:
    """The file of ``folder`` that holds ``key``.

    It is the shard the index names, else ``model.safetensors``.
    """
    index = os.path.join(folder, SAFE_INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return os.path.join(folder, json.load(f)["weight_map"].get(key, SAFE_INDEX))
    return os.path.join(folder, "model.safetensors")


def to_ours(
    state: Mapping[str, torch.Tensor], folder: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's tensors to our state-dict keys and fuse q/k/v.

    An unknown key names its file.
    """
    ours: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _QKV_PATTERN.fullmatch(key)
        if match:
            layer, part, kind = match.groups()
            qkv.setdefault((layer, kind), {})[part] = tensor
            continue
        target = _rename(key, _TO_OURS)
        if target is None:
            raise CheckpointError(
                f"{key_file(folder, key)}: key {key!r} is not part of "
                "Qwen2AudioForConditionalGeneration as this library maps it "
                "(qwen_audio.qwen2_audio.weights.WEIGHT_MAP)"
            )
        ours[target] = tensor
    for (layer, kind), parts in qkv.items():
        missing = [QKV.format(layer, p, kind) for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(
                f"{key_file(folder, missing[0])}: missing key {missing[0]!r} (q, k and v are fused)"
            )
        ours[FUSED_QKV.format(layer, kind)] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return ours


def to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the checkpoint's names, ``c_attn`` split back into q/k/v."""
    hf: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _FUSED_PATTERN.fullmatch(key)
        if match:
            layer, kind = match.groups()
            for part, piece in zip("qkv", tensor.chunk(3)):
                hf[QKV.format(layer, part, kind)] = piece.contiguous()
            continue
        target = _rename(key, _TO_HF)
        if target is None:
            raise CheckpointError(
                f"state-dict key {key!r} has no Qwen2-Audio name (not in WEIGHT_MAP)"
            )
        hf[target] = tensor
    return hf
