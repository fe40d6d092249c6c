"""QwenAudio as a whole: audio splice, loss, training switches, full-size counts.

The splice is checked on hand-built tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from qwen_audio.config import QwenAudioConfig
from qwen_audio.lengths import audio_lengths
from qwen_audio.model import QwenAudio, label_positions, last_tokens, token_losses
from qwen_audio.modules.decoder import KVCache
from qwen_audio.modules.fusion import AudioSpliceError, splice_audio

S, E = 50, 51  # <audio>, </audio> in the hand-built cases


def _clip(n: int, value: float) -> torch.Tensor:
    return torch.full((n, 2), value)


def test_splice_overwrites_each_span_through_its_end_token():
    ids = torch.tensor([[1, S, 9, 9, E, 2, S, 9, E, 3], [4, 4, 4, S, 9, 9, 9, E, 5, 5]])
    embeds = torch.arange(20.0).view(2, 10, 1).expand(2, 10, 2).clone()
    clips = [_clip(4, -1.0), _clip(3, -2.0), _clip(5, -3.0)]
    out = splice_audio(embeds, ids, clips, S)
    expected = embeds.clone()
    expected[0, 1:5] = -1.0
    expected[0, 6:9] = -2.0
    expected[1, 3:8] = -3.0
    assert_close(out, expected)
    assert_close(embeds, torch.arange(20.0).view(2, 10, 1).expand(2, 10, 2))  # input untouched


def test_splice_passes_gradients_to_text_and_audio():
    ids = torch.tensor([[1, S, 9, E]])
    embeds = torch.ones(1, 4, 2, requires_grad=True)
    clip = torch.ones(3, 2, requires_grad=True)
    splice_audio(embeds, ids, [clip], S).sum().backward()
    assert embeds.grad[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert_close(clip.grad, torch.ones(3, 2))


@pytest.mark.parametrize(
    ("ids", "clips", "message"),
    [
        ([[1, S, 9, E], [S, 9, 9, E]], [_clip(3, 0)], "2 <audio> tokens but 1 audio clips"),
        (
            [[1, S, 9, E], [S, 9, 9, E]],
            [_clip(3, 0), _clip(3, 0)],
            r"sample 1, audio 0 \(clip 1\).*4 positions.*gave 3",
        ),
        ([[S, 9, E, 1], [S, 9, 9, 9]], [_clip(3, 0), _clip(5, 0)], "sample 1, audio 0.*not closed"),
        ([[S, S, E, E]], [_clip(3, 0), _clip(2, 0)], "sample 0, audio 1.*not closed"),
        ([[1, 2, E, 3]], [], "sample 0: 1 </audio> tokens but 0 <audio>"),
    ],
)
def test_splice_mismatch_is_a_clear_error(ids, clips, message):
    ids = torch.tensor(ids)
    with pytest.raises(AudioSpliceError, match=message):
        splice_audio(torch.zeros(*ids.shape, 2), ids, clips, S)


def _loop_splice(embeds, input_ids, audio, audio_start_id):
    """The splice as it was before it was vectorised, one Python step per clip.

    It is the reference for random spans.
    """
    if embeds.shape[:2] != input_ids.shape:
        raise ValueError(
            f"embeds {tuple(embeds.shape)} and input_ids {tuple(input_ids.shape)} disagree on [B, L]"
        )
    starts = (input_ids == audio_start_id).nonzero().tolist()
    ends = (input_ids == audio_start_id + 1).nonzero().tolist()
    if len(starts) != len(audio):
        raise AudioSpliceError(
            f"the prompts hold {len(starts)} <audio> tokens but {len(audio)} audio clips were "
            "encoded"
        )
    ends_by_sample: dict[int, list[int]] = {}
    for sample, col in ends:
        ends_by_sample.setdefault(sample, []).append(col)
    rows, cols, index_in_sample, previous_end = [], [], {}, {}
    for k, ((sample, start), clip) in enumerate(zip(starts, audio, strict=True)):
        nth = index_in_sample[sample] = index_in_sample.get(sample, -1) + 1
        sample_ends = ends_by_sample.get(sample, [])
        end = sample_ends[nth] if nth < len(sample_ends) else None
        if end is None or end < start or start <= previous_end.get(sample, -1):
            raise AudioSpliceError(
                f"sample {sample}, audio {nth} (clip {k}): <audio> at position {start} is not closed by the next "
                f"</audio> (at {end}) before another span starts"
            )
        previous_end[sample] = end
        if end - start + 1 != clip.shape[0]:
            raise AudioSpliceError(
                f"sample {sample}, audio {nth} (clip {k}): the prompt span <audio>...</audio> holds {end - start + 1} "
                f"positions but the encoder gave {clip.shape[0]} vectors (audio tokens + 2)"
            )
        rows.append(torch.full((clip.shape[0],), sample))
        cols.append(torch.arange(start, end + 1))
    for sample, sample_ends in ends_by_sample.items():
        if len(sample_ends) != index_in_sample.get(sample, -1) + 1:
            raise AudioSpliceError(
                f"sample {sample}: {len(sample_ends)} </audio> tokens but {index_in_sample.get(sample, -1) + 1} "
                "<audio> tokens"
            )
    if not audio:
        return embeds
    index = (torch.cat(rows).to(embeds.device), torch.cat(cols).to(embeds.device))
    return embeds.index_put(index, torch.cat(list(audio)).to(embeds.dtype))


def _random_prompts(generator: torch.Generator, batch: int = 3, length: int = 24):
    """Random text ids (never a marker) with random non-overlapping spans of 2-6 positions.

    It also gives one clip per span.
    """
    ids = torch.randint(1, 40, (batch, length), generator=generator)
    clips = []
    for row in ids:
        col = int(torch.randint(0, 4, (), generator=generator))
        while True:
            width = int(torch.randint(2, 7, (), generator=generator))
            if col + width > length:
                break
            row[col], row[col + width - 1] = S, E
            clips.append(torch.randn(width, 3, generator=generator))
            col += width + int(torch.randint(0, 4, (), generator=generator))
    return ids, clips


def _outcome(splice, embeds, ids, clips):
    try:
        return splice(embeds, ids, clips, S)
    except AudioSpliceError as err:
        return str(err)


@pytest.mark.parametrize("seed", range(40))
def test_splice_equals_the_per_clip_loop_on_random_spans(seed):
    generator = torch.Generator().manual_seed(seed)
    ids, clips = _random_prompts(generator)
    embeds = torch.randn(*ids.shape, 3, generator=generator)
    assert clips and torch.equal(
        splice_audio(embeds, ids, clips, S), _loop_splice(embeds, ids, clips, S)
    )
    # One random corruption: an <audio> anywhere (with a clip added, so the count holds), a </audio>
    # anywhere, a clip dropped, a clip one vector longer; or none.
    row, col = (int(torch.randint(0, n, (), generator=generator)) for n in ids.shape)
    kind = seed % 5
    if kind == 0:
        ids[row, col] = S
        clips.append(
            torch.randn(int(torch.randint(2, 7, (), generator=generator)), 3, generator=generator)
        )
    elif kind == 1:
        ids[row, col] = E
    elif kind == 2:
        clips = clips[:-1]
    elif kind == 3:
        clips[col % len(clips)] = torch.cat([clips[col % len(clips)], clips[col % len(clips)][:1]])
    ours, loop = (
        _outcome(splice_audio, embeds, ids, clips),
        _outcome(_loop_splice, embeds, ids, clips),
    )
    if isinstance(loop, str):
        assert ours == loop
    else:
        assert torch.equal(ours, loop)


@pytest.fixture(scope="module")
def tiny_model() -> QwenAudio:
    torch.manual_seed(0)
    config = QwenAudioConfig.from_name("tiny", attention_backend="sdpa")
    return QwenAudio(config).eval()


def _prompt(model: QwenAudio, span: int, text: list[int]) -> list[int]:
    start = model.config.audio_start_id
    return [11, start] + [151] * (span - 2) + [start + 1] + text


def test_forward_splices_audio_and_computes_the_shifted_fp32_loss(tiny_model):
    lengths = [audio_lengths(n) for n in (16000, 7040)]  # 1 s -> 25 audio tokens, 0.44 s -> 11
    assert [x.span_tokens for x in lengths] == [27, 13]
    rows = [
        _prompt(tiny_model, lengths[0].span_tokens, [5, 6, 7]),
        _prompt(tiny_model, lengths[1].span_tokens, [8, 9]) + [0] * 15,
    ]
    ids = torch.tensor(rows)
    mask = (
        torch.arange(ids.shape[1]) < torch.tensor([len(rows[0]), len(rows[1]) - 15])[:, None]
    ).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    mel = torch.randn(2, 80, 100)
    mel_lengths = torch.tensor([x.mel_frames for x in lengths])
    with torch.no_grad():
        out = tiny_model(
            ids, audio_mel=mel, audio_mel_lengths=mel_lengths, attention_mask=mask, labels=labels
        )
        clips = tiny_model.encode_audio(mel, mel_lengths)
        spliced = splice_audio(
            tiny_model.transformer.wte(ids), ids, clips, tiny_model.config.audio_start_id
        )
        hidden, _ = tiny_model.transformer(spliced, mask)
    assert_close(out.logits, tiny_model.lm_head(hidden))
    logits, targets = out.logits[:, :-1].double(), labels[:, 1:]
    counted = targets != -100
    log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    assert_close(out.loss.double(), -(log_probs[counted]).mean(), atol=1e-5, rtol=1e-5)
    assert out.loss.dtype == torch.float32
    # the training path: the head only where a label is predicted, the same losses
    at = label_positions(labels)
    assert at.sum() == counted.sum() and not at[:, -1].any()
    with torch.no_grad():
        lean = tiny_model(
            ids, audio_mel=mel, audio_mel_lengths=mel_lengths, attention_mask=mask, logits_at=at
        ).logits
    assert_close(lean, out.logits[at])
    for full, selected in zip(
        token_losses(out.logits, labels), token_losses(lean, labels), strict=True
    ):
        assert_close(full, selected)
    assert_close(
        token_losses(lean, labels)[0][counted].double(), -log_probs[counted], atol=1e-5, rtol=1e-5
    )


def test_last_tokens_marks_each_rows_last_real_token():
    mask = torch.tensor(
        [
            [0, 0, 1, 1],  # left padding: the last column
            [1, 1, 1, 1],
            [1, 1, 0, 0],  # right padding: column 1
            [1, 1, 2, 0],
        ]
    )  # packed sequences (ids 1, 2): column 2
    assert last_tokens(mask).tolist() == [
        [False, False, False, True],
        [False, False, False, True],
        [False, True, False, False],
        [False, False, True, False],
    ]


def test_prefill_logits_at_last_tokens_are_the_full_forwards(tiny_model):
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = tiny_model(ids, attention_mask=mask, position_ids=positions).logits
        lean = tiny_model(
            ids, attention_mask=mask, position_ids=positions, logits_at=last_tokens(mask)
        ).logits
    assert lean.shape == (2, tiny_model.config.decoder.vocab_size)
    assert_close(lean, full[:, -1])


def test_forward_with_cache_matches_the_full_forward(tiny_model):
    ids = torch.tensor([_prompt(tiny_model, 27, [5, 6, 7, 8])])
    mel, mel_lengths = torch.randn(1, 80, 100), torch.tensor([100])
    with torch.no_grad():
        full = tiny_model(ids, audio_mel=mel, audio_mel_lengths=mel_lengths).logits
        cache = KVCache.allocate(
            tiny_model.config.decoder, 1, ids.shape[1], device="cpu", dtype=torch.float32
        )
        first = tiny_model(
            ids[:, :-2], audio_mel=mel, audio_mel_lengths=mel_lengths, kv_cache=cache
        )
        second = tiny_model(ids[:, -2:], kv_cache=cache)
    assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-5, rtol=1e-5)


def test_training_stages_freeze_the_other_part(tiny_model):
    model = QwenAudio(tiny_model.config)
    model.set_trainable(encoder=True, decoder=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.named_parameters() if n.startswith("transformer.audio.")
    }
    assert (
        "transformer.audio.audio_bos_eos_token.weight" in trainable
        and "transformer.audio.proj.weight" in trainable
    )
    model.set_trainable(encoder=False, decoder=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if not n.startswith("transformer.audio.")
    }


def test_activation_checkpointing_gives_the_same_gradients(tiny_model):
    ids = torch.tensor([_prompt(tiny_model, 27, [5, 6, 7])])
    mel, mel_lengths = torch.randn(1, 80, 100), torch.tensor([100])
    grads = []
    for enabled in (False, True):
        model = QwenAudio(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        model.train().set_activation_checkpointing(enabled)
        model(ids, audio_mel=mel, audio_mel_lengths=mel_lengths, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, msg=name)


def test_full_size_model_builds_on_meta_with_the_released_parameter_counts():
    with torch.device("meta"):
        model = QwenAudio(QwenAudioConfig.from_name("qwen-audio"))
    encoder = sum(p.numel() for p in model.encoder.parameters())
    llm = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("transformer.audio.")
    )
    assert encoder == 640_119_808  # spec §2
    assert model.encoder.positional_embedding.numel() == 1_920_000
    assert llm == 7_754_182_656  # spec §3
    assert llm - model.lm_head.weight.numel() == 7_115_423_744
    # Whisper-large-v2's own encoder part (conv + blocks + ln_post), spec §2
    new = sum(
        p.numel()
        for p in (*model.encoder.proj.parameters(), *model.encoder.audio_bos_eos_token.parameters())
    )
    assert encoder - new == 634_864_640
    model.set_trainable(encoder=True, decoder=False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 640_119_808
