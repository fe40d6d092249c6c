"""Splicing encoder outputs into the token embedding sequence, as the release does.

See spec §3 "Audio splicing".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class AudioSpliceError(ValueError):
    """The prompt's ``<audio>...</audio>`` spans do not match the encoded audio."""


def splice_audio(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio: Sequence[torch.Tensor],
    audio_start_id: int,
) -> torch.Tensor:
    """Overwrite every ``<audio>`` ... ``</audio>`` span with one clip's ``[bos | frames | eos]``.

    Both ends of a span are included. ``embeds`` is ``[B, L, D]`` and ``input_ids`` is ``[B, L]``.
    ``audio`` holds one ``[span, D]`` tensor per ``<audio>`` occurrence in row-major order (sample
    0's audios first). ``</audio>`` is ``audio_start_id + 1``. Returns a new tensor. Gradients flow
    to both the text embeddings and the audio.

    The splice is vectorised. Running counts of the markers find the spans. One ``masked_scatter``
    fills them (its row-major order is the clips' order). One host sync checks them, however many
    clips there are.
    """
    if embeds.shape[:2] != input_ids.shape:
        raise ValueError(
            f"embeds {tuple(embeds.shape)} and input_ids {tuple(input_ids.shape)} disagree on [B, L]"
        )
    starts, ends = input_ids == audio_start_id, input_ids == audio_start_id + 1
    # Spans open and close in turn in every row exactly when this is 0 or 1 everywhere and 0 at the
    # row's end.
    open_spans = starts.cumsum(1) - ends.cumsum(1)
    in_span = (open_spans == 1) | ends
    clip_of = (
        starts.flatten().cumsum(0).view_as(starts) - 1
    )  # the row-major clip index a span position belongs to
    num_clips = len(audio)
    bins = (
        torch.where(in_span, clip_of, num_clips).clamp(0, num_clips).flatten()
    )  # num_clips: outside any span
    span_lengths = torch.zeros(num_clips + 1, dtype=torch.long, device=bins.device).index_add_(
        0, bins, torch.ones_like(bins)
    )[:num_clips]
    clip_lengths = torch.tensor([clip.shape[0] for clip in audio], dtype=torch.long).to(bins.device)
    matches = (
        (starts.sum() == num_clips)
        & ((open_spans == 0) | (open_spans == 1)).all()
        & (open_spans[:, -1:] == 0).all()
        & (span_lengths == clip_lengths).all()
    )
    if not bool(matches):
        raise _first_mismatch(input_ids, clip_lengths.tolist(), audio_start_id)
    if not audio:
        return embeds
    return embeds.masked_scatter(in_span[..., None], torch.cat(list(audio)).to(embeds.dtype))


def _first_mismatch(
    input_ids: torch.Tensor, clip_lengths: list[int], audio_start_id: int
) -> AudioSpliceError:
    """Name the first thing wrong.

    It checks the clip count, then clips in row-major order, then a row's spare ``</audio>``.
    """
    rows = input_ids.tolist()
    markers = [
        (
            [col for col, token in enumerate(row) if token == audio_start_id],
            [col for col, token in enumerate(row) if token == audio_start_id + 1],
        )
        for row in rows
    ]
    num_starts = sum(len(starts) for starts, _ in markers)
    if num_starts != len(clip_lengths):
        return AudioSpliceError(
            f"the prompts hold {num_starts} <audio> tokens but {len(clip_lengths)} audio clips were encoded"
        )
    clip = 0
    for sample, (starts, ends) in enumerate(markers):
        previous_end = -1
        for nth, start in enumerate(starts):
            end = ends[nth] if nth < len(ends) else None
            where = f"sample {sample}, audio {nth} (clip {clip})"
            if end is None or end < start or start <= previous_end:
                return AudioSpliceError(
                    f"{where}: <audio> at position {start} is not closed by the next </audio> (at {end}) "
                    "before another span starts"
                )
            if end - start + 1 != clip_lengths[clip]:
                return AudioSpliceError(
                    f"{where}: the prompt span <audio>...</audio> holds {end - start + 1} positions but the encoder "
                    f"gave {clip_lengths[clip]} vectors (audio tokens + 2)"
                )
            previous_end, clip = end, clip + 1
    sample, (starts, ends) = next((s, m) for s, m in enumerate(markers) if len(m[0]) != len(m[1]))
    return AudioSpliceError(
        f"sample {sample}: {len(ends)} </audio> tokens but {len(starts)} <audio> tokens"
    )
