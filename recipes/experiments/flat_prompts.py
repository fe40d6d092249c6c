"""The flat-prompt baseline of the tag ablation: one dataset-ID token per dataset.

This token stands in for the hierarchical tags.

Before Qwen-Audio, multi-task audio models kept datasets from interfering by "assigning a dataset ID
to each dataset" (paper §3.2). The paper's hierarchical tags replace that ID by shared tags:
transcription or analysis, audio language, task, text language, timestamps, output instruction.
Datasets with something in common then share the tags for it.

This module is the naive baseline on the demo corpus. After ``</audio>`` comes one unused released
token, ``<|extra_k|>``, naming the dataset (task x audio language). The question of a
question-answering example follows. No prompt token is shared between datasets. English ASR and
English SRWT have neither ``<|en|>`` nor ``<|transcribe|>`` in common. Whatever they share, the
model must find in the audio and the targets alone.

Targets are those of the tag prompts (:func:`~qwen_audio.prompts.task_target`). A timestamped prompt
still ends with the ``<|0.00|>`` its target starts from. Both styles thus put loss on the same
tokens, so their losses compare.

The baseline belongs to the tag ablation alone, so it lives here and the library does not know it.
``python -m recipes.experiments.flat_prompts fit ...`` is the pretraining recipe with
:class:`FlatPromptDataModule` as its data.
"""

from __future__ import annotations

import torch

from qwen_audio.clips import featurize
from qwen_audio.data import AudioTextDataModule
from qwen_audio.data.dataset import (
    AudioTextDataset,
    Sample,
    Transform,
    load_segment,
)
from qwen_audio.data.manifest import ManifestEntry
from qwen_audio.errors import InputError
from qwen_audio.lit import QwenAudioModule
from qwen_audio.prompts import TASKS, Example, ExampleBuilder, task_target
from qwen_audio.tokenizer import TASK_TOKENS, Tokenizer, timestamp_token
from recipes.cli import QwenAudioCLI, run

# (task, audio language) of each dataset of the demo corpus -> its ID token
DATASET_TOKENS: dict[tuple[str, str | None], str] = {
    ("asr", "en"): "<|extra_0|>",
    ("asr", "zh"): "<|extra_1|>",
    ("srwt", "en"): "<|extra_2|>",
    ("srwt", "zh"): "<|extra_3|>",
    ("mna", None): "<|extra_4|>",
    ("asc", None): "<|extra_5|>",
    ("aqa", None): "<|extra_6|>",
}
TIMESTAMPED_START = timestamp_token(0.0)


def dataset_token(task: str, audio_language: str | None) -> str:
    """The ID token of the dataset an entry belongs to."""
    try:
        return DATASET_TOKENS[task, audio_language]
    except KeyError:
        known = ", ".join(f"{t}/{language}" for t, language in DATASET_TOKENS)
        raise ValueError(
            f"no flat prompt for task {task!r} with audio_language {audio_language!r}; the flat "
            f"baseline names the demo corpus's datasets only: {known}"
        ) from None


def encode_flat(
    tokenizer: Tokenizer, entry: ManifestEntry, target: str | None = None, max_length: int = 2048
) -> Example:
    """The flat-prompt example of the entry's audio segment, with ``target`` when given.

    Its tokens are ``<audio>PATH</audio><|extra_k|>`` [question] [``<|0.00|>``] [+ target +
    ``<|endoftext|>``]. It is the flat counterpart of :func:`qwen_audio.prompts.encode_task`.
    Without ``target`` it is the prompt for generation.
    """
    builder = ExampleBuilder(tokenizer)
    builder.add_audio(load_segment(entry), entry.audio)
    builder.add([tokenizer.special_id(dataset_token(entry.task, entry.audio_language))])
    if entry.question is not None:
        builder.add(tokenizer.encode(entry.question))
    timestamped = TASKS[entry.task].timestamps
    if timestamped:
        builder.add([tokenizer.special_id(TIMESTAMPED_START)])
    if target is not None:
        if timestamped:
            if not target.startswith(TIMESTAMPED_START):
                raise ValueError(
                    f"{entry.audio}: target of task {entry.task!r} must start with {TIMESTAMPED_START}"
                )
            target = target[len(TIMESTAMPED_START) :]
        builder.add([*tokenizer.encode(target, TASK_TOKENS), tokenizer.eod], learn=True)
    return builder.build(max_length, entry.audio)


class FlatPromptDataset(AudioTextDataset):
    """:class:`AudioTextDataset` with the flat prompts of :func:`encode_flat`.

    They take the place of the hierarchical tags.
    """

    def encode(self, entry: ManifestEntry, transform: Transform | None = None) -> Sample:
        if transform is not None:
            raise InputError("data.augment: the flat-prompt experiment takes no augmentation")
        example = encode_flat(
            self.tokenizer,
            entry,
            task_target(entry.task, entry.text, entry.words, entry.duration),
            self.max_length,
        )
        mels, mel_lengths = featurize(example.clips, self.n_mels)
        ids, labels = torch.tensor(example.ids), torch.tensor(example.labels)
        return Sample(ids, labels, mels, mel_lengths, entry.task)


class FlatPromptDataModule(AudioTextDataModule):
    """:class:`~qwen_audio.data.AudioTextDataModule` whose examples have the flat prompts.

    It takes indexed manifests only.
    """

    dataset_class = FlatPromptDataset

    def setup(self, stage: str | None = None) -> None:
        if self.streaming:
            raise InputError("data.streaming: the flat prompts read indexed manifests only")
        super().setup(stage)


if __name__ == "__main__":
    run(QwenAudioCLI, QwenAudioModule, FlatPromptDataModule)
