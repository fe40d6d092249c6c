"""LoRA on the decoder through peft, so that stage 2 fits one GPU.

The base model stays frozen (in bf16) and only low-rank adapters of the decoder's linear layers are
trained. ``docs/sft.md`` works out the memory.

peft (and transformers behind it) takes seconds to import. The functions that use it therefore
import it, and runs without LoRA never pay for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from qwen_audio.model import QwenAudio

DECODER_LINEARS = (
    "c_attn",
    "c_proj",
    "w1",
    "w2",
)  # attention qkv and output; SwiGLU gate, up and down (c_proj)


@dataclass
class LoraOptions:
    """The LoRA settings of a recipe.

    They are peft's ``LoraConfig`` ``r``, ``lora_alpha`` and ``lora_dropout``.

    ``target_modules`` names the linear layers inside the decoder blocks (``transformer.h.N.attn.*``
    and ``transformer.h.N.mlp.*``) that get adapters. The audio encoder never does, as it is frozen
    in stage 2.
    """

    rank: int = 64
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DECODER_LINEARS))


def add_lora(model: QwenAudio, options: LoraOptions) -> QwenAudio:
    """Wrap the target layers with adapters in place and freeze everything else.

    The adapters come from peft's ``inject_adapter_in_model``. ``B`` starts at zero, so the wrapped
    model computes exactly what it did before.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = "|".join(re.escape(name) for name in options.target_modules)
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=rf"transformer\.h\.\d+\.(?:attn|mlp)\.(?:{names})",
    )
    return inject_adapter_in_model(config, model)


def lora_state_dict(model: QwenAudio, base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A base checkpoint's tensors under their names in the wrapped ``model``.

    The model's own adapter weights are added. A name ``X.weight`` becomes ``X.base_layer.weight``.
    A released folder thus loads with the usual checks of keys and shapes.
    """
    renamed = {
        key.replace(".base_layer.", "."): key for key in model.state_dict() if ".base_layer." in key
    }
    adapters = {key: value for key, value in model.state_dict().items() if ".lora_" in key}
    return {renamed.get(key, key): value for key, value in base.items()} | adapters


def merge_lora(model: QwenAudio) -> QwenAudio:
    """Fold every adapter into its base weight and drop the wrappers.

    The model is then in the released layout again, ready for ``save_pretrained``.
    """
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model
