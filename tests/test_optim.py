"""Layer-wise LR decay groups and the warmup-cosine schedule, against hand-worked values."""

import math

import pytest
import torch
from torch import nn

from qwen_audio.lit.optim import layer_depth, param_groups, warmup_cosine


def test_layer_depth_counts_blocks_above_each_parameter():
    n = 32
    assert layer_depth("transformer.audio.conv1.weight", n) == 33
    assert layer_depth("transformer.audio.positional_embedding", n) == 33
    assert layer_depth("transformer.audio.blocks.0.attn.query.weight", n) == 32
    assert layer_depth("transformer.audio.blocks.31.mlp.0.bias", n) == 1
    assert layer_depth("transformer.audio.ln_post.weight", n) == 0
    assert layer_depth("transformer.audio.proj.weight", n) == 0
    assert (
        layer_depth("transformer.h.3.attn.c_attn.weight", n) == 0
    )  # LLM blocks are not encoder blocks
    assert (
        layer_depth("_forward_module.transformer.audio.blocks.2.attn.key.weight", 4) == 2
    )  # wrapped names


def test_param_groups_scale_lr_and_skip_decay_on_vectors():
    named = [
        ("transformer.audio.conv1.weight", nn.Parameter(torch.zeros(4, 2, 3))),
        ("transformer.audio.blocks.0.attn.query.weight", nn.Parameter(torch.zeros(4, 4))),
        ("transformer.audio.blocks.0.attn.query.bias", nn.Parameter(torch.zeros(4))),
        ("transformer.audio.blocks.1.mlp.0.weight", nn.Parameter(torch.zeros(4, 4))),
        ("transformer.audio.proj.weight", nn.Parameter(torch.zeros(4, 4))),
        ("transformer.wte.weight", nn.Parameter(torch.zeros(4, 4), requires_grad=False)),
    ]
    groups = {
        tuple(g["param_names"]): (g["lr"], g["weight_decay"])
        for g in param_groups(named, 1.0, 0.05, 0.5, 2)
    }
    assert groups == {
        ("transformer.audio.proj.weight",): (1.0, 0.05),
        ("transformer.audio.blocks.1.mlp.0.weight",): (0.5, 0.05),
        ("transformer.audio.blocks.0.attn.query.bias",): (0.25, 0.0),
        ("transformer.audio.blocks.0.attn.query.weight",): (0.25, 0.05),
        ("transformer.audio.conv1.weight",): (0.125, 0.05),
    }
    torch.optim.AdamW(param_groups(named, 1.0, 0.05, 0.5, 2))  # groups are valid optimizer input


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 0.1),
        (9, 1.0),
        (10, 1.0),
        (60, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))),
        (110, 0.1),
        (500, 0.1),
    ],
)
def test_warmup_cosine_hand_worked(step, expected):
    assert warmup_cosine(step, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(
        expected
    )
