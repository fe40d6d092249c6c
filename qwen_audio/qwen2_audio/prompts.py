"""Qwen2-Audio's task prompts: a natural-language instruction after the audio.

Qwen-Audio puts its hierarchical task tags (:data:`qwen_audio.prompts.TASKS`) there instead.
Qwen2-Audio's pretraining replaced the tags with such instructions (arXiv 2407.10759, §2 and Figure
2). Its evaluation scripts (QwenLM/Qwen2-Audio ``eval_audio/evaluate_*.py``) prefix the ``prompt``
field of each evaluation file with ``<|audio_bos|><|AUDIO|><|audio_eos|>``.

Our pretraining of the family (``recipes.pretrain --model.preset qwen2-audio-tiny``) uses the same
instructions, with the target after them. :func:`qwen_audio.prompts.family_prompt` picks them for
both. A model is thus evaluated on the prompts it learned.

:data:`INSTRUCTIONS` holds one entry for each task a benchmark of :mod:`qwen_audio.eval.tasks` asks,
with where its text comes from. The tasks Qwen2-Audio's release never prompted for are worded by us
in the style of the released ones. A language tag (``<|en|>``) is written as text and encoded as the
checkpoint's tokenizer encodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

_OURS = "ours: no released Qwen2-Audio prompt for this task; worded like the released ones"
# English names of the translation targets: the languages of Qwen-Audio's language tags
# (tokenizer.LANGUAGES).
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "zh": "Mandarin",
    "ja": "Japanese",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ko": "Korean",
}


@dataclass(frozen=True)
class Instruction:
    """The text after the audio, with where it comes from.

    ``template`` is filled with ``audio_language``, ``text_language`` (its English name) and
    ``question`` by :func:`task_instruction`.
    """

    template: str
    source: str


INSTRUCTIONS: dict[str, Instruction] = {
    "asr": Instruction(
        "Detect the language and recognize the speech: <|{audio_language}|>",
        "the ASR evaluation files of eval_audio/EVALUATION.md (librispeech_eval.jsonl, ...)",
    ),
    "s2tt": Instruction(
        "Detect the language and translate the speech into {text_language}: <|{audio_language}|>",
        "the form of covost2_eval.jsonl's prompts; the language names are ours",
    ),
    "aac": Instruction("Generate the caption in English:", "the Qwen2-Audio-7B model card"),
    "er": Instruction(
        "Recognize the emotion with keywords in English:",
        "meld_eval.jsonl of eval_audio/EVALUATION.md",
    ),
    "vsc": Instruction(
        "Classify the human vocal sound to VocalSound in English:",
        "vocalsound_eval.jsonl of eval_audio/EVALUATION.md",
    ),
    "asc": Instruction("Classify the acoustic scene in English:", _OURS),
    "aqa": Instruction("Answer the question in English: {question}", _OURS),
    "mna": Instruction("Analyze the musical note in English:", _OURS),
    # Ends with the first timestamp, as Qwen-Audio's SRWT prompt does, so that one scorer reads both
    # families.
    "srwt": Instruction(
        "Detect the language and recognize the speech with word timestamps: <|{audio_language}|>"
        "<|0.00|>",
        _OURS,
    ),
}


def task_instruction(
    task: str,
    *,
    audio_language: str | None = None,
    text_language: str | None = None,
    question: str | None = None,
) -> str:
    """Return the instruction of ``task``, its template filled with the fields given.

    For example, ``task_instruction("asr", audio_language="en")`` ==
    ``"Detect the language and recognize the speech: <|en|>"``. A field the template needs must be
    given.
    """
    if task not in INSTRUCTIONS:
        raise ValueError(
            f"Qwen2-Audio has no prompt for task {task!r}; known tasks: {', '.join(INSTRUCTIONS)}"
        )
    template = INSTRUCTIONS[task].template
    if text_language is not None and text_language not in LANGUAGE_NAMES:
        raise ValueError(
            f"text_language {text_language!r} is not one of {', '.join(LANGUAGE_NAMES)}"
        )
    fields = {
        "audio_language": audio_language,
        "question": question,
        "text_language": LANGUAGE_NAMES.get(text_language),
    }
    missing = [
        name for name, value in fields.items() if "{" + name + "}" in template and value is None
    ]
    if missing:
        raise ValueError(f"task {task!r} needs {' and '.join(missing)} for its Qwen2-Audio prompt")
    return template.format(**fields)
