"""Splicing encoder outputs into the token embedding sequence, as the release does (spec §3 "Audio splicing")."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class AudioSpliceError(ValueError):
    """The prompt's ``<audio>...</audio>`` spans do not match the encoded audio."""


def splice_audio(
    embeds: torch.Tensor, input_ids: torch.Tensor, audio: Sequence[torch.Tensor], audio_start_id: int
) -> torch.Tensor:
    """Overwrite every ``<audio>`` ... ``</audio>`` span (both ends included) with one clip's ``[bos; frames; eos]``.

    ``embeds`` ``[B, L, D]``, ``input_ids`` ``[B, L]``; ``audio`` holds one ``[span, D]`` tensor per ``<audio>``
    occurrence in row-major order (sample 0's audios first). ``</audio>`` is ``audio_start_id + 1``. Returns a new
    tensor; gradients flow to both the text embeddings and the audio.
    """
    if embeds.shape[:2] != input_ids.shape:
        raise ValueError(f"embeds {tuple(embeds.shape)} and input_ids {tuple(input_ids.shape)} disagree on [B, L]")
    starts = (input_ids == audio_start_id).nonzero().tolist()
    ends = (input_ids == audio_start_id + 1).nonzero().tolist()
    if len(starts) != len(audio):
        raise AudioSpliceError(f"the prompts hold {len(starts)} <audio> tokens but {len(audio)} audio clips were encoded")
    ends_by_sample: dict[int, list[int]] = {}
    for sample, col in ends:
        ends_by_sample.setdefault(sample, []).append(col)
    rows, cols, index_in_sample, previous_end = [], [], {}, {}
    for k, ((sample, start), clip) in enumerate(zip(starts, audio)):
        nth = index_in_sample[sample] = index_in_sample.get(sample, -1) + 1
        sample_ends = ends_by_sample.get(sample, [])
        end = sample_ends[nth] if nth < len(sample_ends) else None
        if end is None or end < start or start <= previous_end.get(sample, -1):
            raise AudioSpliceError(
                f"sample {sample}, audio {nth} (clip {k}): <audio> at position {start} is not closed by the next </audio> "
                f"(at {end}) before another span starts"
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
                f"sample {sample}: {len(sample_ends)} </audio> tokens but {index_in_sample.get(sample, -1) + 1} <audio> tokens"
            )
    if not audio:
        return embeds
    index = (torch.cat(rows).to(embeds.device), torch.cat(cols).to(embeds.device))
    return embeds.index_put(index, torch.cat(list(audio)).to(embeds.dtype))
