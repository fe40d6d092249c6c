"""Batched greedy decoding: ``qwen_audio.generate`` vs transformers' ``generate`` and the old loop.

    # CPU: the tiny preset, fp32 (PYTHONPATH=. in a checkout)
    python benchmarks_perf/bench_generate.py
    # the demo model
    python benchmarks_perf/bench_generate.py --model demo --batch 16 --new-tokens 64
    python benchmarks_perf/bench_generate.py --model demo --hidden 1024 --decoder-layers 8 \\
        --batch 16
    # the released size (Qwen-7B decoder), bf16
    python benchmarks_perf/bench_generate.py --device cuda

There are three arms. Ours is ``qwen_audio.generate``: a static KV cache written in place, tokens
picked on the device, and one host sync every 8 steps. The "growing cache" arm is the decoding loop
before issue 32, kept here as a baseline only. Its cache grows by ``torch.cat`` at every step, and
the host reads every step's tokens. The third arm is transformers' ``Qwen2ForCausalLM.generate``.
Each arm runs at ``--batch`` and at batch 1, where ms per token is what one user waits per token. On
CUDA the batch-1 step is also put against the copy bandwidth. Reading the decoder's weights once per
token at the measured device-to-device copy rate is the floor.

Ours and transformers' decode the same left-padded batch of text-only prompts (seeded random ids and
lengths) with the same random weights. Qwen(1)'s decoder is Qwen2's architecture with a fused QKV,
so the weights map one to one (spec §9 (b)). Decoding is greedy with a KV cache, exactly
``--new-tokens`` tokens per prompt (no stop token). Prompts + new tokens stay within the trained
context (no dynamic NTK or logN). Runs are timed end to end (prefill + decoding), and tokens/s
counts generated tokens.

The "token agreement" is the fraction of generated positions where transformers picked the same
token. Greedy decoding in bf16 can part ways at a near tie, after which a row's tokens differ. So
the first token's agreement (the same prefill, before any cascade) and "rows identical" are reported
too. Ours applies rotary in fp32, transformers in the model's dtype. So in bf16 the two differ by
more than kernel order.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from qwen_audio.batching import left_pad
from qwen_audio.config import QwenAudioConfig
from qwen_audio.generate import GenerationConfig, generate
from qwen_audio.model import QwenAudio, last_tokens
from qwen_audio.modules.layers import apply_rotary, rotary_cos_sin

from _timing import copy_bandwidth, device_name, measure_ms, pass_or_miss

PAD_ID = 0
SPEEDUP_TARGET = (
    2.0  # benchmarks_perf/README.md: against transformers, at the released size on a GPU
)


def qwen2_reference(model: QwenAudio, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """``Qwen2ForCausalLM`` holding ``model``'s decoder weights.

    c_attn is split into q/k/v (with biases). The SwiGLU gate is w2, up is w1 and down is mlp.c_proj
    (spec §9 (b)).
    """
    config = model.config.decoder
    hf_config = Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size // 2,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        rms_norm_eps=config.layer_norm_epsilon,
        max_position_embeddings=config.seq_length,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        rope_parameters={"rope_type": "default", "rope_theta": config.rotary_emb_base},
        pad_token_id=PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
    )
    decoder = model.decoder
    weights = {
        "model.embed_tokens.weight": decoder.wte.weight,
        "model.norm.weight": decoder.ln_f.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(decoder.h):
        prefix = f"model.layers.{i}."
        q, k, v = block.attn.c_attn.weight.chunk(3)
        q_bias, k_bias, v_bias = block.attn.c_attn.bias.chunk(3)
        weights |= {
            prefix + "input_layernorm.weight": block.ln_1.weight,
            prefix + "post_attention_layernorm.weight": block.ln_2.weight,
            prefix + "self_attn.q_proj.weight": q,
            prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v,
            prefix + "self_attn.q_proj.bias": q_bias,
            prefix + "self_attn.k_proj.bias": k_bias,
            prefix + "self_attn.v_proj.bias": v_bias,
            prefix + "self_attn.o_proj.weight": block.attn.c_proj.weight,
            prefix + "mlp.gate_proj.weight": block.mlp.w2.weight,
            prefix + "mlp.up_proj.weight": block.mlp.w1.weight,
            prefix + "mlp.down_proj.weight": block.mlp.c_proj.weight,
        }
    with torch.device(device):
        reference = Qwen2ForCausalLM(hf_config).to(dtype).eval()
    reference.load_state_dict(weights, strict=True)
    return reference


@torch.no_grad()
def growing_cache_generate(
    model: QwenAudio, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int
) -> list:
    """The greedy loop before issue 32, kept as a baseline.

    Per layer, the cache grows by ``torch.cat`` at every step and the attention mask by one column.
    The host reads every step's tokens, a sync per step.
    """
    decoder = model.decoder
    heads, dim = decoder.config.num_attention_heads, decoder.config.kv_channels
    cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(decoder.h)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs, out = ids, []
    for step in range(new_tokens):
        batch, length = inputs.shape
        rotary = rotary_cos_sin(positions, dim, decoder.config.rotary_emb_base)
        keys = mask.bool()[:, None, None, :]
        causal = torch.ones(length, mask.shape[1], dtype=torch.bool, device=ids.device).tril(
            mask.shape[1] - length
        )
        x = decoder.wte(inputs)
        for i, block in enumerate(decoder.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(batch, length, 3, heads, dim).unbind(2)
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache[i] is not None:
                k, v = torch.cat([cache[i][0], k], dim=1), torch.cat([cache[i][1], v], dim=1)
            cache[i] = (k, v)
            attended = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keys & causal
            ).transpose(1, 2)
            x = x + block.attn.c_proj(attended.flatten(2))
            x = x + block.mlp(block.ln_2(x))
        hidden = (
            decoder.ln_f(x)[last_tokens(mask[:, -length:])] if step == 0 else decoder.ln_f(x)[:, -1]
        )
        token = model.lm_head(hidden).float().argmax(-1)
        out.append(token.tolist())
        inputs, positions = token[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return [list(row) for row in zip(*out)]


def random_prompts(
    count: int, min_tokens: int, max_tokens: int, vocab: int, generator: torch.Generator
) -> list[list[int]]:
    lengths = torch.randint(min_tokens, max_tokens + 1, (count,), generator=generator)
    return [torch.randint(1, vocab, (int(n),), generator=generator).tolist() for n in lengths]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="the CPU sizes (the default on CPU)")
    parser.add_argument(
        "--model", default=None, help="config preset (default: qwen-audio, tiny with --small)"
    )
    parser.add_argument(
        "--decoder-layers", type=int, default=None, help="decoder blocks instead of the preset's"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="decoder width instead of the preset's (heads of 128, MLP 2 x 2.67 x hidden)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="prompts per batch (default: 32, 4 with --small)"
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="prompt length range (default: 16 512, 4 24 with --small)",
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help="tokens generated per prompt (default: 128, 16 with --small)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per implementation (CPU, and CUDA calls of a second or more)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    small = args.small or not cuda
    config = QwenAudioConfig.from_name(args.model or ("tiny" if small else "qwen-audio"))
    if args.decoder_layers:
        config = dataclasses.replace(
            config,
            decoder=dataclasses.replace(config.decoder, num_hidden_layers=args.decoder_layers),
        )
    if args.hidden:
        config = dataclasses.replace(
            config,
            encoder=dataclasses.replace(config.encoder, output_dim=args.hidden),
            decoder=dataclasses.replace(
                config.decoder,
                hidden_size=args.hidden,
                num_attention_heads=args.hidden // 128,
                kv_channels=128,
                intermediate_size=2 * (8 * args.hidden // 3 // 64 * 64),
            ),
        )
    batch = args.batch or (4 if small else 32)
    min_tokens, max_tokens = args.prompt_tokens or ((4, 24) if small else (16, 512))
    new_tokens = args.new_tokens or (16 if small else 128)
    if max_tokens + new_tokens > config.decoder.seq_length:
        parser.error(
            f"--prompt-tokens max {max_tokens} + --new-tokens {new_tokens} exceeds the trained context "
            f"{config.decoder.seq_length} (dynamic NTK and logN would start, which Qwen2 lacks)"
        )

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = QwenAudio(config).to(dtype).eval()
    reference = qwen2_reference(model, device, dtype)
    generator = torch.Generator().manual_seed(args.seed)
    ids, mask = left_pad(
        random_prompts(batch, min_tokens, max_tokens, config.decoder.vocab_size, generator), PAD_ID
    )
    ids, mask = ids.to(device), mask.to(device)
    vocab_size = config.decoder.vocab_size
    generation = GenerationConfig(max_new_tokens=new_tokens, stop_ids=())

    def ours(rows: int = batch) -> list[list[int]]:
        return generate(model, ids[-rows:], mask[-rows:], generation, vocab_size=vocab_size)

    def growing(rows: int = batch) -> list[list[int]]:
        return growing_cache_generate(model, ids[-rows:], mask[-rows:], new_tokens)

    def transformers_generate() -> torch.Tensor:
        return reference.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )[:, ids.shape[1] :]

    with torch.no_grad():
        ours_tokens = torch.tensor(ours())
        reference_tokens = transformers_generate().cpu()
        growing_agrees = growing() == ours_tokens.tolist()
        timings = {
            ("qwen_audio generate (static cache)", batch): measure_ms(ours, device, args.repeats),
            ("growing cache (torch.cat, sync per step; before issue 32)", batch): measure_ms(
                growing, device, args.repeats
            ),
            ("transformers Qwen2ForCausalLM.generate", batch): measure_ms(
                transformers_generate, device, args.repeats
            ),
            ("qwen_audio generate (static cache)", 1): measure_ms(
                lambda: ours(1), device, args.repeats
            ),
            ("growing cache (torch.cat, sync per step; before issue 32)", 1): measure_ms(
                lambda: growing(1), device, args.repeats
            ),
        }
    agreement = (ours_tokens == reference_tokens).float().mean().item()
    rows_identical = int((ours_tokens == reference_tokens).all(dim=1).sum())
    first_agreement = (ours_tokens[:, 0] == reference_tokens[:, 0]).float().mean().item()

    name = device_name(device)
    parameters = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.encoder.parameters()
    )
    print(f"greedy generation, {name}, {dtype}, torch {torch.__version__}\n")
    print(
        f"{config.name}: decoder {config.decoder.num_hidden_layers} layers x {config.decoder.hidden_size}, "
        f"{parameters / 1e6:.1f} M parameters (encoder unused); {batch} prompts of {min_tokens}-{max_tokens} tokens "
        f"(lengths {mask.sum(1).tolist()}), left-padded, {new_tokens} new tokens each; first-token agreement "
        f"{first_agreement:.1%}, token agreement {agreement:.1%}, rows identical {rows_identical}/{batch}; "
        f"growing-cache tokens equal ours: {growing_agrees}\n"
    )
    print(
        "| implementation | batch | ms / call | ms / token (per row) | new tokens / s | vs growing cache |"
    )
    print("|---|---|---|---|---|---|")
    for (implementation, rows), ms in timings.items():
        before = timings.get(("growing cache (torch.cat, sync per step; before issue 32)", rows))
        versus = f"{before / ms:.2f}x" if before and "transformers" not in implementation else ""
        print(
            f"| {implementation} | {rows} | {ms:.1f} | {ms / new_tokens:.2f} | {rows * new_tokens / (ms * 1e-3):.0f} "
            f"| {versus} |"
        )
    baseline_ms = timings[("transformers Qwen2ForCausalLM.generate", batch)]
    print(
        f"\nours vs transformers at batch {batch}: "
        f"{baseline_ms / timings[('qwen_audio generate (static cache)', batch)]:.2f}x"
    )
    if device.type == "cuda":
        weight_bytes = sum(
            p.numel() * p.element_size()
            for name_, p in model.named_parameters()
            if not name_.startswith("transformer.audio.")
        )
        token_ms = timings[("qwen_audio generate (static cache)", 1)] / new_tokens
        floor_ms = weight_bytes / copy_bandwidth(device) * 1e3
        print(
            f"batch 1: {token_ms:.2f} ms / token; reading the weights at the copy bandwidth takes {floor_ms:.2f} ms: "
            f"{floor_ms / token_ms:.0%} of the copy bandwidth"
        )
        speedup = baseline_ms / timings[("qwen_audio generate (static cache)", batch)]
        print(
            f"\ntarget: generation {speedup:.2f}x transformers ({config.name}, {batch} prompts; "
            f">= {SPEEDUP_TARGET:g}x): {pass_or_miss(speedup >= SPEEDUP_TARGET)}"
        )


if __name__ == "__main__":
    main()
