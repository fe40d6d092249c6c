"""Callbacks of the recipes: throughput/MFU (Lightning's ThroughputMonitor) and a transcription report."""

from __future__ import annotations

import jiwer
import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.utilities import rank_zero_only

from qwen_audio.data.dataset import audio_features, load_segment
from qwen_audio.data.manifest import ManifestEntry
from qwen_audio.generate import greedy_generate, left_pad
from qwen_audio.prompts import encode_task


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting samples and text tokens per batch; MFU comes from the module's
    ``flops_per_batch`` (set by :class:`QwenAudioModule` each step) and the device's peak FLOP/s (CUDA only)."""

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=lambda batch: len(batch["task"]),
                         length_fn=lambda batch: int(batch["attention_mask"].sum()), window_size=window_size)


def transcribe(module: L.LightningModule, tokenizer, entries: list[ManifestEntry], max_new_tokens: int = 64) -> list[str]:
    """Greedy transcriptions of ``entries`` (one batch) with the release's ASR prompt for each entry's language."""
    prompts, mels, lengths = [], [], []
    for entry in entries:
        waveform = load_segment(entry)
        example = encode_task(tokenizer, "asr", entry.audio, audio_language=entry.audio_language,
                              load={entry.audio: waveform})
        prompts.append(example.ids)
        mel, length = audio_features(waveform, entry.audio)
        mels.append(mel)
        lengths.append(length)
    ids, mask = left_pad(prompts, tokenizer.eod)
    mel_batch = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
    device = module.device
    was_training = module.model.training
    module.model.eval()
    outputs = greedy_generate(module.model, ids.to(device), mask.to(device), {tokenizer.eod}, max_new_tokens, tokenizer.n_vocab,
                              mel_batch.to(device), torch.tensor(lengths, device=device))
    module.model.train(was_training)
    return [tokenizer.decode(out).strip() for out in outputs]


def error_rate(references: list[str], hypotheses: list[str], language: str | None) -> float:
    """WER for space-delimited languages, CER for Chinese (jiwer), on lower-cased text."""
    score = jiwer.cer if language == "zh" else jiwer.wer
    return score([r.lower() for r in references], [h.lower() or "<empty>" for h in hypotheses])


class TranscriptionReport(L.Callback):
    """Prints greedy transcriptions of held-out ASR clips next to their references, with WER/CER per language,
    before and after fitting: the demo's visible proof that the model learned to listen."""

    def __init__(self, num_clips: int = 4, max_new_tokens: int = 64) -> None:
        self.num_clips, self.max_new_tokens = num_clips, max_new_tokens

    def _report(self, trainer: L.Trainer, module: L.LightningModule, title: str) -> None:
        datamodule = trainer.datamodule
        datamodule.setup("test")
        clips = [e for group in datamodule.entries.get("test", []) for e in group if e.task == "asr"]
        lines = [f"\n### {title}: greedy transcriptions of held-out clips", "",
                 "| lang | reference | hypothesis |", "|---|---|---|"]
        for language in sorted({e.audio_language for e in clips}):
            chosen = [e for e in clips if e.audio_language == language][: self.num_clips]
            hypotheses = transcribe(module, datamodule.tokenizer, chosen, self.max_new_tokens)
            lines += [f"| {language} | {e.text} | {h} |" for e, h in zip(chosen, hypotheses)]
            name = "CER" if language == "zh" else "WER"
            lines.append(f"| {language} | **{name}** | **{error_rate([e.text for e in chosen], hypotheses, language):.3f}** |")
        print("\n".join(lines), flush=True)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._report(trainer, module, "before training")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._report(trainer, module, "after training")
