"""Callbacks of the recipes: throughput/MFU (Lightning's ThroughputMonitor), transcription and chat
reports, and the export of the trained model in the released layout."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.utilities import rank_zero_only
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)

from qwen_audio.chat import chat
from qwen_audio.checkpoint import CheckpointError, check_writable, save_pretrained
from qwen_audio.clips import Recording
from qwen_audio.data.dataset import load_segment
from qwen_audio.data.manifest import ManifestEntry
from qwen_audio.eval.metrics import error_rate, majority_accuracy
from qwen_audio.generate import GenerationConfig, answer_prompts
from qwen_audio.lit.flops import bf16_peak_flops
from qwen_audio.lit.lora import merge_lora
from qwen_audio.prompts import DEFAULT_SYSTEM, encode_task


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor, counting samples and text tokens per batch.

    MFU comes from the module's ``flops_per_batch`` (set by :class:`QwenAudioModule` each step) and
    the device's peak FLOP/s (CUDA only). In 16-bit precision the peak comes from
    :mod:`qwen_audio.lit.flops`. It knows the H200 and H100 variants that Lightning's table lacks or
    lists at their sparse figures. Otherwise Lightning's table decides.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(
            batch_size_fn=lambda batch: len(batch["task"]),
            length_fn=lambda batch: int(batch["attention_mask"].sum()),
            window_size=window_size,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        sixteen_bit = str(trainer.precision).startswith(("bf16", "16"))
        peak = bf16_peak_flops(trainer.strategy.root_device) if sixteen_bit else None
        with warnings.catch_warnings():
            if peak is not None:  # Lightning's "FLOPs not found" is answered here
                warnings.filterwarnings("ignore", message="FLOPs not found")
            super().setup(trainer, pl_module, stage)
        if peak is not None:
            self.available_flops = peak
            for throughput in self._throughputs.values():
                throughput.available_flops = peak


def transcribe(
    module: L.LightningModule, tokenizer, entries: list[ManifestEntry], max_new_tokens: int = 64
) -> list[str]:
    """Greedy transcriptions of ``entries`` (one batch) with the release's ASR prompt.

    Each entry gets the prompt for its language.
    """
    examples = [
        encode_task(
            tokenizer, "asr", Recording(load_segment(e), e.audio), audio_language=e.audio_language
        )
        for e in entries
    ]
    was_training = module.model.training
    module.model.eval()
    answers = answer_prompts(
        module.model,
        tokenizer,
        examples,
        GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eod,)),
    )
    module.model.train(was_training)
    return [answer.text for answer in answers]


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: a random model's output may hold newlines and pipes."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n")


class TranscriptionReport(L.Callback):
    """Prints greedy transcriptions of held-out ASR clips next to their references.

    It prints them before and after fitting. Each language also gets its WER/CER (the release's, as
    evaluation scores them). This is visible proof that the model learned to listen.
    """

    def __init__(self, num_clips: int = 4, max_new_tokens: int = 64) -> None:
        self.num_clips, self.max_new_tokens = num_clips, max_new_tokens

    def _report(self, trainer: L.Trainer, module: L.LightningModule, title: str) -> None:
        datamodule = trainer.datamodule
        datamodule.setup("test")
        clips = [
            e for group in datamodule.entries.get("test", []) for e in group if e.task == "asr"
        ]
        lines = [
            f"\n### {title}: greedy transcriptions of held-out clips",
            "",
            "| lang | reference | hypothesis |",
            "|---|---|---|",
        ]
        for language in sorted({e.audio_language for e in clips}):
            chosen = [e for e in clips if e.audio_language == language][: self.num_clips]
            hypotheses = transcribe(module, datamodule.tokenizer, chosen, self.max_new_tokens)
            lines += [f"| {language} | {e.text} | {_cell(h)} |" for e, h in zip(chosen, hypotheses)]
            name = "CER" if language == "zh" else "WER"
            score = error_rate([e.text for e in chosen], hypotheses, language)
            lines.append(f"| {language} | **{name}** | **{score:.3f}** |")
        print("\n".join(lines), flush=True)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # not on_fit_start: the module loads its init_from weights in its own on_fit_start, after
        # the callbacks'
        self._report(trainer, module, "before training")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._report(trainer, module, "after training")


def _shown(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        f"[{item['audio'].rsplit('/', 1)[-1]}]" if "audio" in item else item["text"]
        for item in content
    )


def _normalised_answer(text: str) -> str:
    return " ".join(re.sub(r"[^\w#]+", " ", text.lower()).split())


class ChatTranscript(L.Callback):
    """Prints chat replays and answer accuracy on held-out conversations, before and after fitting.

    The accuracy is that of greedy :func:`qwen_audio.chat.chat` on the first audio question of
    ``num_questions`` held-out test conversations, per question family. Beside it stands the
    majority answer's accuracy, what a model that ignores the audio can score. The majority answer
    is the training split's most common answer of the family. ``per_group`` test conversations with
    audio and as many pure-text ones are replayed turn by turn. The model's own answers become the
    history. This is proof that SFT taught the model to answer what it hears. The question families
    are the data module's (:meth:`~qwen_audio.data.chat_datamodule.ChatDataModule.question_family`).
    """

    def __init__(
        self, per_group: int = 3, num_questions: int = 100, max_new_tokens: int = 32
    ) -> None:
        self.per_group, self.num_questions, self.max_new_tokens = (
            per_group,
            num_questions,
            max_new_tokens,
        )

    def _answer(self, module, tokenizer, conversation, config) -> list[tuple[str, str, str]]:
        history, turns = [], []
        for user, reference in zip(conversation.messages[::2], conversation.messages[1::2]):
            answer, history = chat(
                module.model,
                tokenizer,
                user.content,
                history,
                system=conversation.system or DEFAULT_SYSTEM,
                config=config,
            )
            turns.append((_shown(user.content), answer, reference.content))
        return turns

    def _report(self, trainer: L.Trainer, module: L.LightningModule, title: str) -> None:
        datamodule = trainer.datamodule
        datamodule.setup("fit")
        datamodule.setup("test")
        tokenizer = datamodule.tokenizer
        config = GenerationConfig.chat(
            tokenizer, do_sample=False, max_new_tokens=self.max_new_tokens
        )
        was_training = module.model.training
        module.model.eval()
        with_audio, text_only = datamodule.conversations["test"]
        lines = [
            f"\n### {title}: chat on held-out conversations",
            "",
            "| id | user | model | reference |",
            "|---|---|---|---|",
        ]
        for conversation in with_audio[: self.per_group] + text_only[: self.per_group]:
            lines += [
                f"| {conversation.id} | {u} | {a} | {r} |"
                for u, a, r in self._answer(module, tokenizer, conversation, config)
            ]
        train_answers: dict[str, list[str]] = {}
        for conversation in datamodule.conversations.get("train", [[]])[0]:
            train_answers.setdefault(datamodule.question_family(conversation.id), []).append(
                _normalised_answer(conversation.messages[1].content)
            )
        references: dict[str, list[str]] = {}
        right: Counter[str] = Counter()
        for conversation in with_audio[: self.num_questions]:
            user = conversation.messages[0]
            reference = _normalised_answer(conversation.messages[1].content)
            answer, _ = chat(
                module.model,
                tokenizer,
                user.content,
                system=conversation.system or DEFAULT_SYSTEM,
                config=config,
            )
            family = datamodule.question_family(conversation.id)
            references.setdefault(family, []).append(reference)
            right[family] += _normalised_answer(answer) == reference
        module.model.train(was_training)
        lines += [
            "",
            f"#### {title}: answer accuracy on the first question of held-out conversations",
            "",
            "| family | questions | accuracy | majority answer (training split's) |",
            "|---|---|---|---|",
        ]
        # the majority answer is each family's most common answer in the training conversations
        majority_right = {
            kind: majority_accuracy(train_answers.get(kind, []), refs) * len(refs)
            for kind, refs in references.items()
        }
        total = sum(len(refs) for refs in references.values())
        for kind in sorted(references):
            count = len(references[kind])
            lines.append(
                f"| {kind} | {count} | {right[kind] / count:.3f} | "
                f"{majority_right[kind] / count:.3f} |"
            )
        if total:
            lines.append(
                f"| all | {total} | {sum(right.values()) / total:.3f} | "
                f"{sum(majority_right.values()) / total:.3f} |"
            )
        print("\n".join(lines), flush=True)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # not on_fit_start: the module loads its init_from weights in its own on_fit_start, after
        # the callbacks'
        self._report(trainer, module, "before SFT")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._report(trainer, module, "after SFT")


class ExportPretrained(L.Callback):
    """Writes the trained model in the released layout at the end of fit.

    The layout holds ``config.json``, safetensors and ``qwen.tiktoken``. It is the folder that
    generation, chat, evaluation and the SFT recipe's ``init_from`` read. Under FSDP every rank
    takes part in gathering the full weights. Rank 0 writes them, each file replaced atomically and
    other files in the folder kept (see :func:`qwen_audio.checkpoint.save_pretrained`). The folder
    is checked for writability when fit starts.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        """Fail before training, not after it, when the export folder cannot be written."""
        if stage != "fit":
            return
        problem = None
        if trainer.is_global_zero:
            try:
                check_writable(self.dirpath)
            except CheckpointError as err:
                problem = str(err)
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise CheckpointError(problem)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if getattr(module, "lora", None) is not None:
            merge_lora(
                module.model
            )  # fold the adapters in: the released layout has no LoRA tensors
        state = get_model_state_dict(
            module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if trainer.is_global_zero:
            save_pretrained(
                module.model,
                self.dirpath,
                tokenizer_file=trainer.datamodule.tokenizer.path,
                state_dict=state,
            )
            corpus = getattr(trainer.datamodule, "training_corpus", None)
            if corpus is not None:  # evaluation reads the same corpus back (BenchmarkDataModule)
                corpus.save_record(Path(self.dirpath))
            print(f"exported the trained model to {self.dirpath}", flush=True)
        trainer.strategy.barrier()
