"""Encoder, decoder and attention against independent references with the same fp32 random weights.

References: transformers' WhisperEncoder / Qwen2AudioEncoder (spec §9 (a)), Qwen2ForCausalLM (spec
§9 (b)), and an explicit float64 softmax(QK^T)V for the attention backends.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch.testing import assert_close
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig
from transformers.models.qwen2_audio import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from qwen_audio.config import AudioEncoderConfig, DecoderConfig
from qwen_audio.lengths import conv_frames, pooled_frames
from qwen_audio.modules.attention import AttentionLayout, attention, resolve_attention_backend
from qwen_audio.modules.decoder import KVCache, QwenDecoder
from qwen_audio.modules.encoder import AudioEncoder
from qwen_audio.modules.layers import ntk_alpha

ENC = AudioEncoderConfig(n_mels=80, n_ctx=16, n_state=32, n_head=4, n_layer=2, output_dim=48)
# Imported by path: qwen_audio.modules exports a function named ``attention``.
attention_module = importlib.import_module("qwen_audio.modules.attention")
DEC = DecoderConfig(
    vocab_size=101,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    kv_channels=16,
    intermediate_size=192,
    seq_length=64,
)


# ---------------------------------------------------------------- attention backends


def _reference_attention(q, k, v, segment_ids, causal):
    """float64 softmax(QK^T / sqrt(d))V over the allowed keys; padded queries -> 0.

    Allowed keys are in the same run, and causal bottom-right.
    """
    batch, lq, heads, dim = q.shape
    lk = k.shape[1]
    out = torch.zeros(batch, lq, heads, dim, dtype=torch.float64)
    for b in range(batch):
        seg = segment_ids[b].tolist()
        run_of = []  # run index per key position, None on padding
        run = -1
        for j, s in enumerate(seg):
            if s > 0 and (j == 0 or seg[j - 1] != s):
                run += 1
            run_of.append(run if s > 0 else None)
        for i in range(lq):
            p = lk - lq + i
            if run_of[p] is None:
                continue
            keys = [j for j in range(lk) if run_of[j] == run_of[p] and (not causal or j <= p)]
            scores = torch.einsum("hd,jhd->hj", q[b, i].double(), k[b, keys].double()) / math.sqrt(
                dim
            )
            out[b, i] = torch.einsum("hj,jhd->hd", scores.softmax(-1), v[b, keys].double())
    return out


MASK_CASES = {
    "right padded": ([[1] * 7, [1] * 4 + [0] * 3], 7),
    "left padded": ([[1] * 7, [0] * 3 + [1] * 4], 7),
    "packed": ([[1, 1, 2, 2, 2, 3, 0], [5, 5, 5, 5, 1, 1, 1]], 7),
    "decode step": ([[1] * 7, [0] * 2 + [1] * 5], 1),
    "chunk after cache": ([[1] * 7, [0] * 2 + [1] * 5], 3),
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_sdpa_backend_matches_float64_reference(case, causal):
    segments, lq = MASK_CASES[case]
    if not causal and lq != len(segments[0]):
        pytest.skip("cached decoding is causal")
    segment_ids = torch.tensor(segments)
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, lq, 3, 8, generator=generator)
    k, v = (torch.randn(2, 7, 3, 8, generator=generator) for _ in range(2))
    layout = AttentionLayout.build(
        segment_ids,
        batch_size=2,
        query_length=lq,
        key_length=7,
        causal=causal,
        backend="sdpa",
        device=q.device,
        dtype=q.dtype,
    )
    assert_close(
        attention(q, k, v, layout).double(),
        _reference_attention(q, k, v, segment_ids, causal),
        atol=1e-6,
        rtol=1e-5,
    )


def test_forced_fused_backend_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="needs CUDA"):
        AttentionLayout.build(
            None,
            batch_size=1,
            query_length=4,
            key_length=4,
            causal=True,
            backend="varlen",
            device=torch.device("cpu"),
            dtype=torch.float32,
        )


@pytest.mark.parametrize(
    ("installed", "capability", "dtype", "expected"),
    [
        (True, (9, 0), torch.bfloat16, "flash_attn"),  # H100 / H200
        (True, (10, 0), torch.float16, "flash_attn"),  # B200
        (True, (8, 0), torch.bfloat16, "varlen"),  # A100: FlashAttention-4 has no SM80 kernels
        (False, (9, 0), torch.bfloat16, "varlen"),  # not installed
        (True, (9, 0), torch.float32, "sdpa"),  # fp32: no fused kernel
    ],
)
def test_auto_backend_picks_flash_attn_4_only_where_it_runs(
    monkeypatch, installed, capability, dtype, expected
):
    monkeypatch.setattr(attention_module, "_flash_attn_available", lambda: installed)
    monkeypatch.setattr(attention_module, "_cuda_capability", lambda device: capability)
    assert resolve_attention_backend("auto", torch.device("cuda"), dtype) == expected
    assert resolve_attention_backend("auto", torch.device("cpu"), dtype) == "sdpa"


@pytest.mark.parametrize(
    ("installed", "capability", "message"),
    [
        (False, (9, 0), "needs FlashAttention-4"),
        (True, (8, 6), "compute capability >= 9.0, cuda has 8.6"),
    ],
)
def test_forced_flash_attn_where_it_cannot_run_is_a_clear_error(
    monkeypatch, installed, capability, message
):
    monkeypatch.setattr(attention_module, "_flash_attn_available", lambda: installed)
    monkeypatch.setattr(attention_module, "_cuda_capability", lambda device: capability)
    with pytest.raises(ValueError, match=message):
        resolve_attention_backend("flash_attn", torch.device("cuda"), torch.bfloat16)


def test_flash_attn_4_detection_ignores_flash_attn_2(monkeypatch):
    """Only ``flash_attn.cute`` (the flash-attn-4 wheel) counts; a bare ``flash_attn`` package is
    flash-attn 2."""
    found = {"flash_attn": object()}

    def find_spec(name):
        if name.startswith("flash_attn.") and "flash_attn" not in found:
            raise ModuleNotFoundError(name)
        return found.get(name)

    monkeypatch.setattr(attention_module.importlib.util, "find_spec", find_spec)
    assert not attention_module._flash_attn_available()
    found.clear()
    assert not attention_module._flash_attn_available()
    found.update({"flash_attn": object(), "flash_attn.cute": object()})
    assert attention_module._flash_attn_available()


def _skip_unless_backend_runs(backend: str) -> None:
    try:
        resolve_attention_backend(backend, torch.device("cuda"), torch.bfloat16)
    except ValueError as err:
        pytest.skip(str(err))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["varlen", "flash_attn"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_fused_backends_match_sdpa_on_cuda(backend, causal, case):
    _skip_unless_backend_runs(backend)
    segments, lq = MASK_CASES[case]
    if not causal and lq != len(segments[0]):
        pytest.skip("cached decoding is causal")
    segment_ids = torch.tensor(segments, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, lq, 4, 64, generator=generator, device="cuda", dtype=torch.bfloat16)
    k, v = (
        torch.randn(2, 7, 4, 64, generator=generator, device="cuda", dtype=torch.bfloat16)
        for _ in range(2)
    )
    outs = {}
    for name in ("sdpa", backend):
        layout = AttentionLayout.build(
            segment_ids,
            batch_size=2,
            query_length=lq,
            key_length=7,
            causal=causal,
            backend=name,
            device=q.device,
            dtype=q.dtype,
        )
        outs[name] = attention(q, k, v, layout).float()
    assert_close(outs[backend], outs["sdpa"], atol=2e-2, rtol=2e-2)
    reference = _reference_attention(q.cpu(), k.cpu(), v.cpu(), segment_ids.cpu(), causal)
    assert_close(outs["sdpa"].double().cpu(), reference, atol=3e-2, rtol=3e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])  # the encoder's heads, the LLM's
def test_flash_attn_4_matches_torch_reference_forward_and_backward(causal, head_dim):
    """FlashAttention-4 against the float64 per-sequence reference on a packed batch, output and
    q/k/v gradients: the encoder (bidirectional) and decoder (causal, training and prefill)
    calls."""
    _skip_unless_backend_runs("flash_attn")
    segment_ids = torch.tensor([[1] * 90 + [2] * 70 + [0] * 40, [1] * 200], device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (
        torch.randn(
            2, 200, 4, head_dim, generator=generator, device="cuda", dtype=torch.bfloat16
        ).requires_grad_()
        for _ in range(3)
    )
    grad_out = torch.randn(
        2, 200, 4, head_dim, generator=generator, device="cuda", dtype=torch.bfloat16
    )
    layout = AttentionLayout.build(
        segment_ids,
        batch_size=2,
        query_length=200,
        key_length=200,
        causal=causal,
        backend="flash_attn",
        device=q.device,
        dtype=q.dtype,
    )
    out = attention(q, k, v, layout)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    reference = _reference_attention(*leaves, segment_ids.cpu(), causal)
    reference_grads = torch.autograd.grad(reference, leaves, grad_out.cpu().double())
    assert_close(out.cpu().double(), reference, atol=2e-2, rtol=2e-2)
    for grad, expected in zip(grads, reference_grads, strict=True):
        assert_close(grad.cpu().double(), expected, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- encoder vs transformers


def _tiny_encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    encoder = AudioEncoder(ENC, attention_backend="sdpa").eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith(("attn_ln.weight", "mlp_ln.weight", "ln_post.weight")):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.3)
    return encoder


def _hf_encoder_weights(encoder: AudioEncoder) -> dict[str, torch.Tensor]:
    renames = {
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "mlp_ln": "final_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
    }
    out = {}
    for name, tensor in encoder.state_dict().items():
        if name == "positional_embedding":
            out["embed_positions.weight"] = tensor
        elif name.startswith("ln_post."):
            out[name.replace("ln_post", "layer_norm")] = tensor
        elif name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            for ours, theirs in renames.items():
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours) :]
                    break
            out[f"layers.{index}.{rest}"] = tensor
        elif name.startswith(("conv1.", "conv2.")):
            out[name] = tensor
    return out


def _hf_kwargs():
    return dict(
        num_mel_bins=ENC.n_mels,
        encoder_layers=ENC.n_layer,
        encoder_attention_heads=ENC.n_head,
        encoder_ffn_dim=4 * ENC.n_state,
        d_model=ENC.n_state,
        max_source_positions=ENC.n_ctx,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="gelu",
    )


def _key_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    valid = torch.arange(size)[None, :] < lengths[:, None]
    return torch.zeros(len(lengths), 1, size, size).masked_fill(
        ~valid[:, None, None, :], float("-inf")
    )


def test_encoder_blocks_match_whisper_encoder_full_input():
    encoder = _tiny_encoder()
    whisper = WhisperEncoder(WhisperConfig(**_hf_kwargs(), attn_implementation="eager")).eval()
    weights = {k: v for k, v in _hf_encoder_weights(encoder).items()}
    whisper.load_state_dict(weights, strict=True)
    mel = torch.randn(2, ENC.n_mels, 2 * ENC.n_ctx)
    with torch.no_grad():
        frames, lengths = encoder.frames(mel, torch.full((2,), 2 * ENC.n_ctx))
        expected = whisper(mel).last_hidden_state
    assert lengths.tolist() == [ENC.n_ctx] * 2
    assert_close(encoder.ln_post(frames), expected, atol=1e-5, rtol=1e-5)


def _qwen2_audio_reference(
    encoder: AudioEncoder, mel: torch.Tensor, frames: torch.Tensor
) -> torch.Tensor:
    hf = Qwen2AudioEncoder(
        Qwen2AudioEncoderConfig(**_hf_kwargs(), attn_implementation="eager")
    ).eval()
    hf.load_state_dict(_hf_encoder_weights(encoder), strict=True)
    with torch.no_grad():
        pooled = hf(mel, attention_mask=_key_mask(frames, ENC.n_ctx)).last_hidden_state
        return torch.nn.functional.linear(pooled, encoder.proj.weight, encoder.proj.bias)


def test_encoder_matches_qwen2_audio_encoder_full_input():
    encoder = _tiny_encoder(1)
    mel = torch.randn(2, ENC.n_mels, 2 * ENC.n_ctx)
    expected = _qwen2_audio_reference(encoder, mel, torch.full((2,), ENC.n_ctx))
    with torch.no_grad():
        clips = encoder(mel, torch.full((2,), 2 * ENC.n_ctx))
    bos, eos = encoder.audio_bos_eos_token.weight
    for clip, reference in zip(clips, expected, strict=True):
        assert clip.shape == (ENC.n_ctx // 2 + 2, ENC.output_dim)
        assert_close(clip[1:-1], reference, atol=1e-5, rtol=1e-5)
        assert_close(clip[0], bos)
        assert_close(clip[-1], eos)


@pytest.mark.parametrize("short_mel", [9, 10, 17, 22])
def test_encoder_is_batch_invariant_and_matches_the_clip_encoded_alone(short_mel):
    """Spec §10: a clip beside a longer one gives what the release gives for it alone. Alone, the
    release cuts the mel at 2 * T_cnn frames and conv1 pads with zeros; Qwen2AudioEncoder sees the
    same when the frames past 2 * T_cnn are zero and keys past T_cnn are masked."""
    encoder = _tiny_encoder(2)
    mel = torch.randn(2, ENC.n_mels, 2 * ENC.n_ctx)
    mel_lengths = torch.tensor([2 * ENC.n_ctx, short_mel])
    with torch.no_grad():
        batched = encoder(mel, mel_lengths)
        alone = encoder(mel[1:, :, : short_mel + 1], mel_lengths[1:])
    t_cnn = conv_frames(short_mel)
    release_alone_input = mel[1:].clone()
    release_alone_input[:, :, 2 * t_cnn :] = 0
    expected = _qwen2_audio_reference(encoder, release_alone_input, torch.tensor([t_cnn]))[
        0, : pooled_frames(t_cnn)
    ]
    assert batched[1].shape[0] == pooled_frames(t_cnn) + 2
    assert_close(batched[1][1:-1], expected, atol=1e-5, rtol=1e-5)
    assert_close(alone[0], batched[1], atol=1e-5, rtol=1e-5)
    assert_close(
        batched[0][1:-1],
        _qwen2_audio_reference(encoder, mel[:1], torch.tensor([ENC.n_ctx]))[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_encoder_rejects_bad_lengths():
    encoder = _tiny_encoder()
    with pytest.raises(ValueError, match="mel lengths"):
        encoder(torch.zeros(1, ENC.n_mels, 40), torch.tensor([40]))  # 20 frames > n_ctx 16
    with pytest.raises(ValueError, match=r"\[N, 80, frames\]"):
        encoder(torch.zeros(1, 40, 8), torch.tensor([8]))


# ---------------------------------------------------------------- decoder vs Qwen2ForCausalLM


def _tiny_decoder(
    config: DecoderConfig = DEC, seed: int = 0
) -> tuple[QwenDecoder, torch.nn.Linear]:
    torch.manual_seed(seed)
    decoder = QwenDecoder(config, attention_backend="sdpa").eval()
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    with torch.no_grad():
        for name, param in [*decoder.named_parameters(), ("head", head.weight)]:
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.2)
    return decoder, head


def _qwen2_reference(
    decoder: QwenDecoder, head: torch.nn.Linear, rope_theta: float
) -> Qwen2ForCausalLM:
    """Spec §9 (b): c_attn split into q/k/v (with biases), gate = w2, up = w1, down = mlp.c_proj."""
    config = decoder.config
    hf_config = Qwen2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size // 2,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        rms_norm_eps=config.layer_norm_epsilon,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    model = Qwen2ForCausalLM(hf_config).eval()
    weights = {
        "model.embed_tokens.weight": decoder.wte.weight,
        "model.norm.weight": decoder.ln_f.weight,
        "lm_head.weight": head.weight,
    }
    for i, block in enumerate(decoder.h):
        prefix = f"model.layers.{i}."
        q, k, v = block.attn.c_attn.weight.chunk(3)
        qb, kb, vb = block.attn.c_attn.bias.chunk(3)
        weights.update(
            {
                prefix + "input_layernorm.weight": block.ln_1.weight,
                prefix + "post_attention_layernorm.weight": block.ln_2.weight,
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.q_proj.bias": qb,
                prefix + "self_attn.k_proj.bias": kb,
                prefix + "self_attn.v_proj.bias": vb,
                prefix + "self_attn.o_proj.weight": block.attn.c_proj.weight,
                prefix + "mlp.gate_proj.weight": block.mlp.w2.weight,
                prefix + "mlp.up_proj.weight": block.mlp.w1.weight,
                prefix + "mlp.down_proj.weight": block.mlp.c_proj.weight,
            }
        )
    model.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=True)
    return model


def test_decoder_matches_qwen2_for_causal_lm():
    decoder, head = _tiny_decoder()
    reference = _qwen2_reference(decoder, head, DEC.rotary_emb_base)
    ids = torch.randint(0, DEC.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, _ = decoder(decoder.wte(ids))
        expected = reference(ids).logits
    assert_close(head(hidden), expected, atol=1e-4, rtol=1e-4)


def test_kv_cache_decoding_equals_full_forward_and_reference():
    decoder, head = _tiny_decoder(seed=1)
    reference = _qwen2_reference(decoder, head, DEC.rotary_emb_base)
    ids = torch.randint(0, DEC.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = decoder(decoder.wte(ids))
        cache = KVCache.allocate(DEC, 2, 12, device="cpu", dtype=torch.float32)
        hidden, _ = decoder(decoder.wte(ids[:, :6]), kv_cache=cache)
        steps = [hidden]
        for t in range(6, 10):
            hidden, _ = decoder(decoder.wte(ids[:, t : t + 1]), kv_cache=cache, key_length=t + 1)
            steps.append(hidden)
        expected = reference(ids).logits
    assert cache.lengths.tolist() == [10, 10]
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert_close(head(torch.cat(steps, dim=1)), expected, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_with_positions_from_mask_matches_reference_and_unpadded_rows():
    decoder, head = _tiny_decoder(seed=2)
    reference = _qwen2_reference(decoder, head, DEC.rotary_emb_base)
    ids = torch.randint(0, DEC.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = KVCache.allocate(DEC, 3, 12, device="cpu", dtype=torch.float32)
        hidden, _ = decoder(
            decoder.wte(ids),
            attention_mask=mask,
            position_ids=positions,
            kv_cache=cache,
            cache_slots=torch.tensor([2, 0]),
        )  # any slots: the cache holds no padding
        assert cache.lengths.tolist() == [5, 0, 9]
        short, _ = decoder(decoder.wte(ids[1:, 4:]))
        expected = reference(ids, attention_mask=mask, position_ids=positions).logits
        next_ids = torch.randint(
            0, DEC.vocab_size, (2, 1), generator=torch.Generator().manual_seed(3)
        )
        step, _ = decoder(decoder.wte(next_ids), kv_cache=cache, cache_slots=torch.tensor([2, 0]))
        short_step, _ = decoder(decoder.wte(torch.cat([ids[1:, 4:], next_ids[1:]], 1)))
    assert_close(head(hidden)[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)
    assert_close(hidden[1, 4:], short[0], atol=1e-5, rtol=1e-5)
    assert_close(step[1, 0], short_step[0, -1], atol=1e-5, rtol=1e-5)


def test_dynamic_ntk_matches_reference_with_the_stretched_base():
    """Beyond seq_length at inference the rotary base becomes base * alpha**(d / (d - 2)).

    logN is off here.
    """
    config = DecoderConfig(**{**DEC.__dict__, "seq_length": 4, "use_logn_attn": False})
    decoder, head = _tiny_decoder(config, seed=3)
    alpha = 7  # L = 12: 2**ceil(log2(12 / 4) + 1) - 1
    reference = _qwen2_reference(decoder, head, config.rotary_emb_base * alpha ** (16 / 14))
    ids = torch.randint(0, DEC.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden, _ = decoder(decoder.wte(ids))
        expected = reference(ids).logits
    assert_close(head(hidden), expected, atol=1e-4, rtol=1e-4)
    decoder.train()  # off in training: the plain base
    with torch.no_grad():
        hidden, _ = decoder(decoder.wte(ids))
        plain = _qwen2_reference(decoder, head, config.rotary_emb_base)(ids).logits
    assert_close(head(hidden), plain, atol=1e-4, rtol=1e-4)


def test_ntk_alpha_and_logn_follow_the_release_formulas():
    # get_ntk_alpha: 2 ** ceil(log2(L / 2048) + 1) - 1, at least 1
    lengths = torch.tensor([1, 2048, 2049, 4096, 4097, 8192, 8193])
    assert ntk_alpha(lengths, 2048).tolist() == [1, 1, 3, 3, 7, 7, 15]
    config = DecoderConfig(**{**DEC.__dict__, "seq_length": 4})
    decoder, _ = _tiny_decoder(config)
    scale = decoder._logn_scale(torch.arange(8)[None])
    expected = [math.log(i, 4) if i > 4 else 1 for i in range(1, 9)]  # the release's logn_list
    assert_close(
        scale[0].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6
    )
    assert torch.equal(
        decoder._logn_scale(torch.arange(4)[None]), torch.ones(1, 4)
    )  # exactly 1 before
