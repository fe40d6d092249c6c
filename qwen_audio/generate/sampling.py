"""Picking each slot's next token on the device: repetition penalty, minimum length, temperature,
top-k, top-p.

Every decoding setting is a per-slot tensor, so rows that decode differently (greedy, sampled,
transcriptions) share one batch, and nothing reaches the host. The transforms are transformers'
logits processors rewritten on those tensors, applied in the order its ``generate`` applies them on
fp32 scores (tests compare them with transformers). A sampled slot draws from its own
``torch.Generator``: seeded, it gives the sample it gives alone, whatever else is in the batch.
"""

from __future__ import annotations

import torch

from qwen_audio.generate.config import GenerationConfig


class SlotSampler:
    """The decoding settings and the state of ``slots`` rows over ``vocab`` ids.

    The state is the tokens seen and the tokens made.
    """

    def __init__(self, slots: int, vocab: int, device: torch.device) -> None:
        self.vocab, self.device = vocab, device
        self.do_sample = torch.zeros(slots, dtype=torch.bool, device=device)
        self.temperature = torch.ones(slots, device=device)
        self.top_k = torch.zeros(slots, dtype=torch.long, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.penalty = torch.ones(slots, device=device)
        self.min_new = torch.zeros(slots, dtype=torch.long, device=device)
        self.made = torch.zeros(slots, dtype=torch.long, device=device)  # tokens picked so far
        self.stops = torch.zeros(
            slots, vocab + 1, dtype=torch.bool, device=device
        )  # id vocab: padding
        self.seen = torch.zeros(slots, vocab + 1, dtype=torch.bool, device=device)
        self.generators: list[torch.Generator | None] = [None] * slots
        self._sampled: set[int] = set()  # host-side: which slots sample (known when they are set)
        self._penalised: set[int] = set()
        self._lower_bounded: set[int] = set()  # slots with a min_new_tokens

    def set(self, slot: int, config: GenerationConfig, prompt_ids: torch.Tensor) -> None:
        """Give ``slot`` the settings of ``config``; ``prompt_ids`` (padding as id ``vocab``) count
        as seen, as in transformers' repetition penalty (audio placeholders included, as in the
        release)."""
        self.do_sample[slot] = config.do_sample
        self.temperature[slot] = config.temperature
        self.top_k[slot] = min(config.top_k, self.vocab)
        self.top_p[slot] = config.top_p
        self.penalty[slot] = config.repetition_penalty
        self.min_new[slot] = config.min_new_tokens
        self.made[slot] = 0
        self.stops[slot] = False
        self.stops[slot, list(config.stop_ids)] = True
        self.seen[slot] = False
        self.seen[slot, prompt_ids.clamp(max=self.vocab)] = True
        self.generators[slot] = None
        if config.do_sample and config.seed is not None:
            self.generators[slot] = torch.Generator(self.device).manual_seed(config.seed)
        (self._sampled.add if config.do_sample else self._sampled.discard)(slot)
        (self._penalised.add if config.repetition_penalty != 1.0 else self._penalised.discard)(slot)
        (self._lower_bounded.add if config.min_new_tokens else self._lower_bounded.discard)(slot)

    def clear(self, slot: int) -> None:
        """Forget ``slot``'s settings (it is free)."""
        self._sampled.discard(slot)
        self._penalised.discard(slot)
        self._lower_bounded.discard(slot)
        self.generators[slot] = None

    def _index(self, slots: list[int]) -> slice | torch.Tensor:
        """``slots`` as an index: a view for the usual ``0..n-1``, a gather otherwise."""
        if slots == list(range(len(slots))):
            return slice(0, len(slots))
        return torch.tensor(slots, device=self.device)

    def pick(self, logits: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """The next token of each of ``slots`` from its fp32 ``logits`` row.

        ``logits`` is ``[len(slots), vocab]``.
        """
        index = self._index(slots)
        scores = self.scores(logits, slots, index)
        tokens = scores.argmax(-1)
        sampled = [row for row, slot in enumerate(slots) if slot in self._sampled]
        if sampled:
            probs = self.warp(scores, index).softmax(-1)
            for row in sampled:
                tokens[row] = torch.multinomial(
                    probs[row], 1, generator=self.generators[slots[row]]
                )[0]
        return tokens

    def scores(
        self, logits: torch.Tensor, slots: list[int], index: slice | torch.Tensor
    ) -> torch.Tensor:
        """Repetition penalty and minimum length: the processors greedy decoding applies too."""
        scores = logits
        if any(slot in self._penalised for slot in slots):
            penalty = self.penalty[index][:, None]
            penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
            scores = torch.where(
                self.seen[index][:, : self.vocab] & (penalty != 1), penalised, scores
            )
        if not any(slot in self._lower_bounded for slot in slots):
            return scores
        too_short = (self.made[index] < self.min_new[index])[:, None] & self.stops[index][
            :, : self.vocab
        ]
        return scores.masked_fill(too_short, -float("inf"))

    def warp(self, scores: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, then top-p, as transformers' warpers.

        Top-p keeps at least one token.
        """
        scores = scores / self.temperature[index][:, None]
        top_k = self.top_k[index][:, None]
        kth = scores.sort(-1, descending=True).values.gather(1, (top_k - 1).clamp(min=0))
        scores = scores.masked_fill((top_k > 0) & (scores < kth), -float("inf"))
        top_p = self.top_p[index][:, None]
        ascending, order = scores.sort(-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        drop &= top_p < 1
        return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))

    def advance(self, tokens: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Record the tokens just picked for ``slots``; whether each is a stop token."""
        index = self._index(slots)
        if isinstance(index, slice):
            index = torch.arange(len(slots), device=self.device)
        self.made[index] += 1
        if any(
            slot in self._penalised for slot in slots
        ):  # others' seen ids are set afresh when they join
            self.seen[index, tokens] = True
        return self.stops[index, tokens]
