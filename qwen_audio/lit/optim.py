"""AdamW parameter groups with layer-wise LR decay over encoder blocks; warmup + cosine schedule.

Defaults follow spec §8, Qwen-VL's published recipe, as Qwen-Audio's Table 6 is unavailable. They
are AdamW (0.9, 0.98), eps 1e-6, weight decay 0.05, and linear warmup then cosine decay to 10 % of
the peak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

_ENCODER_BLOCK = re.compile(r"(?:^|\.)audio\.blocks\.(\d+)\.")
_ENCODER_STEM = re.compile(r"(?:^|\.)audio\.(?:conv1|conv2|positional_embedding)")


def layer_depth(name: str, num_encoder_layers: int) -> int:
    """How many encoder blocks lie above parameter ``name``.

    Everything after the last block (pool, ln_post, proj, audio bos/eos, and the LLM) gets 0.
    Block ``i`` gets ``n - i``. The conv stem gets ``n + 1``."""
    if block := _ENCODER_BLOCK.search(name):
        return num_encoder_layers - int(block.group(1))
    if _ENCODER_STEM.search(name):
        return num_encoder_layers + 1
    return 0


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    weight_decay: float,
    layer_decay: float,
    num_encoder_layers: int,
) -> list[dict]:
    """Trainable parameters grouped by (depth, decayed?): lr = ``lr * layer_decay ** depth``.

    Matrices get weight decay. Biases, norm weights and other 1-D parameters do not (the usual AdamW
    practice).
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        depth = layer_depth(name, num_encoder_layers)
        decayed = param.dim() >= 2
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "param_names": [],
                "lr": lr * layer_decay**depth,
                "weight_decay": weight_decay if decayed else 0.0,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``
    at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
