"""The recipes, the chat template and the server on Qwen2-Audio, each against transformers: a folder
of the ``qwen2-audio-tiny`` architecture written by transformers' own ``save_pretrained`` (random
fp32 weights), its ``Qwen2AudioProcessor`` with the processor's chat template, and its ``generate``.
Nothing is downloaded.

- evaluation on the demo benchmark: every response is transformers' greedy answer to Qwen2-Audio's
  instruction;
- the chat template: audios are labelled ``Audio n: `` and numbered across the conversation, in
  ``encode_chat`` (SFT data), ``chat`` and the server alike;
- SFT from ``--model.init_from`` (decoder or LoRA): the training loss falls, the right weights
  change, and transformers reads the export;
- the server: the openai client's greedy answer is transformers' greedy answer.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openai
import pytest
import soundfile
import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from qwen_audio.audio import SAMPLE_RATE, load_audio
from qwen_audio.batching import batch_prompts
from qwen_audio.chat import chat
from qwen_audio.checkpoint import load_model, read_config
from qwen_audio.config import QwenAudioConfig
from qwen_audio.data.conversations import Conversation, read_conversations
from qwen_audio.data.demo import build_demo_chat
from qwen_audio.eval.report import METRICS_FILE, PREDICTIONS_FILE
from qwen_audio.eval.tasks import BENCHMARKS
from qwen_audio.generate import GenerationConfig
from qwen_audio.prompts import IGNORE_INDEX, Message, encode_chat, from_list_format
from qwen_audio.qwen2_audio.tokenizer import DEMO_TOKENIZER_FILE
from recipes.evaluate import main as evaluate
from recipes.sft import main as sft

REPO = Path(__file__).resolve().parents[1]
STOPS = [4098, 4096]  # <|im_end|>, <|endoftext|> of the demo tokenizer.json
IM_START = 4097
HF_AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
# Qwen2-Audio's instruction for each demo benchmark: the release's evaluation-file prompt where it
# has one (ASR), our wording in its style for the tasks it never prompted for.
DEMO_INSTRUCTIONS = {
    "demo_asr_en": "Detect the language and recognize the speech: <|en|>",
    "demo_asr_zh": "Detect the language and recognize the speech: <|zh|>",
    "demo_srwt_en": "Detect the language and recognize the speech with word timestamps: <|en|><|0.00|>",
    "demo_srwt_zh": "Detect the language and recognize the speech with word timestamps: <|zh|><|0.00|>",
    "demo_mna": "Analyze the musical note in English:",
    "demo_asc": "Classify the acoustic scene in English:",
    "demo_aqa": "Answer the question in English: {question}",
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A random ``Qwen2AudioForConditionalGeneration`` of the ``qwen2-audio-tiny`` sizes saved by
    transformers, with the demo tokenizer.json, its stop ids, two float wavs, and transformers'
    processor."""
    folder = tmp_path_factory.mktemp("qwen2-audio-tiny")
    config = Qwen2AudioConfig(
        audio_config=dict(
            d_model=64,
            encoder_attention_heads=4,
            encoder_ffn_dim=256,
            encoder_layers=2,
            num_mel_bins=128,
        ),
        text_config=dict(
            vocab_size=4102,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
        ),
        audio_token_index=4099,
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():
        for (
            parameter
        ) in model.parameters():  # well away from the 0.02 init, so that greedy tokens discriminate
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    shutil.copyfile(DEMO_TOKENIZER_FILE, folder / "tokenizer.json")
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": STOPS, "pad_token_id": 4096})
    )
    rng = np.random.default_rng(0)
    clips = folder.parent / f"{folder.name}-clips"
    clips.mkdir()
    waves = {}
    for name, samples in (("a.wav", 20_837), ("b.wav", 37_120)):
        t = np.arange(samples) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(samples)
        waves[name] = wave.astype(np.float32)
        soundfile.write(clips / name, waves[name], SAMPLE_RATE, subtype="FLOAT")
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")),
    )
    return SimpleNamespace(
        folder=folder,
        model=model,
        processor=processor,
        waves=waves,
        a=str(clips / "a.wav"),
        b=str(clips / "b.wav"),
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The size-1 demo corpus (and its chat files), built once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_AUDIO_DEMO_DIR", str(tmp_path_factory.mktemp("qwen2-demo-corpus")))
        yield


def _hf_answer(
    release, text: str, audios: list[np.ndarray], max_new_tokens: int, model=None
) -> str:
    """transformers' greedy continuation of ``text`` (the processor expands its audio markers), cut
    where ours stops (a stop id, or ``<|im_start|>``), decoded by the HF tokenizer."""
    inputs = release.processor(
        text=text, audio=audios or None, sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    model = model or release.model
    if model.dtype == torch.float64:
        inputs["input_features"] = inputs["input_features"].double()
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        do_sample=False,
        eos_token_id=STOPS,
        pad_token_id=4096,
    )[0, inputs["input_ids"].shape[1] :].tolist()
    end = next((i for i, t in enumerate(out) if t in (*STOPS, IM_START)), len(out))
    return release.processor.tokenizer.decode(out[:end], clean_up_tokenization_spaces=False).strip()


def test_the_folder_is_the_qwen2_audio_tiny_preset(release):
    """So that the preset and ``--model.init_from FOLDER`` build the architecture of the folder.

    The preset is ``--model.preset qwen2-audio-tiny``.
    """
    ours, preset = read_config(release.folder), QwenAudioConfig.from_name("qwen2-audio-tiny")
    assert (ours.family, ours.encoder, ours.decoder, ours.audio_start_id) == (
        preset.family,
        preset.encoder,
        preset.decoder,
        preset.audio_start_id,
    )


def test_demo_evaluation_gives_transformers_greedy_answers_to_qwen2_audio_instructions(
    release, demo_dir, tmp_path
):
    out = tmp_path / "evaluate"
    evaluate(
        [
            "test",
            "--config",
            str(REPO / "recipes/configs/evaluate/demo.yaml"),
            "--data.corpus.size",
            "1",
            "--model.checkpoint",
            str(release.folder),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    predictions = [
        json.loads(line)
        for line in (out / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()
    ]
    assert {p["benchmark"] for p in predictions} == set(DEMO_INSTRUCTIONS)
    for p in predictions:
        instruction = DEMO_INSTRUCTIONS[p["benchmark"]].format(question=p.get("question"))
        expected = _hf_answer(
            release,
            HF_AUDIO + instruction,
            [load_audio(p["audio"]).numpy()],
            BENCHMARKS[p["benchmark"]].max_new_tokens,
        )
        assert p["response"] == expected, p["benchmark"]
    assert (
        len({p["response"] for p in predictions}) > 3
    )  # a random model answers each prompt differently
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    scored = {
        "demo_asr_en": "wer",
        "demo_asr_zh": "cer",
        "demo_srwt_en": "aas_ms",
        "demo_srwt_zh": "aas_ms",
        "demo_mna": "accuracy",
        "demo_asc": "accuracy",
        "demo_aqa": "accuracy",
    }
    for name, metric in scored.items():
        assert metrics[name][name]["count"] >= 1 and metric in metrics[name][name], name


def test_chat_template_numbers_audios_across_the_conversation_as_transformers(release):
    """Two turns with one audio each: ``Audio 1: `` then ``Audio 2: `` (Qwen-Audio's release
    restarts at ``Audio 1:``, with no space), in the ids of ``encode_chat`` (SFT data) and
    ``chat``."""
    assert (
        from_list_format([{"audio": "b.wav"}], "qwen-audio", audios_before=1)
        == "Audio 1:<audio>b.wav</audio>\n"
    )
    assert (
        from_list_format([{"audio": "b.wav"}], "qwen2-audio", audios_before=1)
        == "Audio 2: <audio>b.wav</audio>\n"
    )
    model, tokenizer = load_model(str(release.folder))
    turns = [
        ([{"audio": release.a}, {"text": "What's that sound?"}], "A tone."),
        ([{"audio": release.b}, {"text": "And this one?"}], "A sweep."),
    ]
    hf_messages = [
        message
        for items, reply in turns
        for message in (
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio_url": i["audio"]}
                    if "audio" in i
                    else {"type": "text", "text": i["text"]}
                    for i in items
                ],
            },
            {"role": "assistant", "content": reply},
        )
    ]
    waves = [release.waves["a.wav"], release.waves["b.wav"]]
    text = release.processor.apply_chat_template(
        hf_messages[:3], add_generation_prompt=True, tokenize=False
    )
    assert "user\nAudio 1: <|audio_bos|>" in text and "user\nAudio 2: <|audio_bos|>" in text
    hf_ids = release.processor(text=text, audio=waves, sampling_rate=SAMPLE_RATE)["input_ids"][0]
    messages = [
        message
        for items, reply in turns
        for message in (Message("user", items), Message("assistant", reply))
    ]
    assert encode_chat(tokenizer, messages[:3], add_generation_prompt=True).ids == list(hf_ids)

    # SFT data: the whole conversation; the template's newline after the last turn is the one token
    # more
    text = release.processor.apply_chat_template(hf_messages, tokenize=False)
    hf_ids = list(
        release.processor(text=text, audio=waves, sampling_rate=SAMPLE_RATE)["input_ids"][0]
    )
    example = Conversation("two-audios", tuple(messages)).encode(tokenizer, 2048)
    assert example.ids == hf_ids[:-1] and tokenizer.decode(hf_ids[-1:]) == "\n"
    learned = [
        tokenizer.decode(
            [
                t
                for t, label in zip(example.ids, example.labels, strict=True)
                if label != IGNORE_INDEX
            ]
        )
    ]
    assert learned == ["A tone.<|im_end|>A sweep.<|im_end|>"]

    config = GenerationConfig.chat(tokenizer, do_sample=False, max_new_tokens=6)
    response, history = chat(model, tokenizer, turns[0][0], config=config)
    answer, history = chat(model, tokenizer, turns[1][0], history, config=config)
    assert history[1][0].startswith(f"Audio 2: <audio>{release.b}</audio>\n")
    hf_messages[1]["content"] = response
    text = release.processor.apply_chat_template(
        hf_messages[:3], add_generation_prompt=True, tokenize=False
    )
    assert answer == _hf_answer(release, text, waves, 6)


def _training_loss(folder: Path, conversations: list[Conversation]) -> float:
    """Mean loss per conversation of the model in ``folder`` on ``conversations``.

    Only assistant tokens count.
    """
    model, tokenizer = load_model(folder)
    losses = []
    for conversation in conversations:
        example = conversation.encode(tokenizer, 2048)
        batch = batch_prompts([example], tokenizer.eod, model.config.encoder.n_mels)
        with torch.no_grad():
            losses.append(
                model(
                    batch.input_ids,
                    audio_mel=batch.audio_mel,
                    audio_mel_lengths=batch.audio_mel_lengths,
                    labels=torch.tensor([example.labels]),
                ).loss.item()
            )
    return sum(losses) / len(losses)


@pytest.mark.parametrize("lora", [False, True], ids=["decoder", "lora"])
def test_sft_fine_tunes_a_folder_transformers_wrote(release, demo_dir, tmp_path, capsys, lora):
    export = tmp_path / "exported"
    override = tmp_path / "override.yaml"
    override.write_text(
        textwrap.dedent(f"""\
        trainer:
          max_steps: 4
          limit_val_batches: 0
          num_sanity_val_steps: 0
          enable_progress_bar: false
          enable_checkpointing: false
          default_root_dir: {tmp_path}
          logger: false
          callbacks:
            - class_path: qwen_audio.lit.ChatTranscript
              init_args: {{per_group: 1, max_new_tokens: 3}}
            - class_path: qwen_audio.lit.ExportPretrained
              init_args: {{dirpath: {export}}}
        model:
          preset: qwen2-audio-tiny
          init_from: {release.folder}
          lr: 1.0e-2
          warmup_steps: 1
          lora: {"{rank: 4, alpha: 8}" if lora else "null"}
        data:
          corpus:
            init_args:
              size: 1
        """)
    )
    cli = sft(
        ["fit", "--config", str(REPO / "recipes/configs/sft/demo.yaml"), "--config", str(override)]
    )
    assert cli.trainer.global_step == 4
    printed = capsys.readouterr().out
    assert "### before SFT" in printed and "### after SFT" in printed
    training = read_conversations(build_demo_chat(size=1)["train"])
    before, after = _training_loss(release.folder, training), _training_loss(export, training)
    assert after < 0.99 * before, (before, after)  # 4 steps: 8.41 -> 7.92 (decoder), 8.27 (LoRA)
    # The export (LoRA merged) is a Qwen2-Audio folder again: transformers reads the trained weights
    # under its names.
    initial = load_model(release.folder)[0].state_dict()
    trained = load_model(export)[0].state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, initial[k])}
    assert "transformer.h.1.mlp.w2.weight" in changed and not any(
        k.startswith("transformer.audio.") for k in changed
    )
    assert ("lm_head.weight" in changed) != lora  # LoRA adapts the blocks' linear layers only
    exported = Qwen2AudioForConditionalGeneration.from_pretrained(export).state_dict()
    assert torch.equal(
        exported["model.language_model.layers.1.mlp.gate_proj.weight"],
        trained["transformer.h.1.mlp.w2.weight"],
    )


def _audio_part(path: str) -> dict:
    with open(path, "rb") as f:
        return {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(f.read()).decode(), "format": "wav"},
        }


def test_server_answers_as_transformers_greedy(release, serve_checkpoint, tmp_path):
    """A two-turn conversation with an audio in each turn through the openai client, greedy, in
    float64 on both sides (no argmax near-tie can differ by rounding)."""
    messages = [
        {
            "role": "user",
            "content": [_audio_part(release.a), {"type": "text", "text": "What is it?"}],
        },
        {"role": "assistant", "content": "A tone."},
        {
            "role": "user",
            "content": [_audio_part(release.b), {"type": "text", "text": "And this one?"}],
        },
    ]
    hf_messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": release.a},
                {"type": "text", "text": "What is it?"},
            ],
        },
        {"role": "assistant", "content": "A tone."},
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": release.b},
                {"type": "text", "text": "And this one?"},
            ],
        },
    ]
    text = release.processor.apply_chat_template(
        hf_messages, add_generation_prompt=True, tokenize=False
    )
    waves = [release.waves["a.wav"], release.waves["b.wav"]]
    expected = _hf_answer(release, text, waves, 8, model=copy.deepcopy(release.model).double())
    prompt_tokens = len(
        release.processor(text=text, audio=waves, sampling_rate=SAMPLE_RATE)["input_ids"][0]
    )
    with serve_checkpoint(
        str(release.folder), str(tmp_path / "server.log"), "--dtype", "float64"
    ) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        name = os.path.basename(release.folder)
        answer = client.chat.completions.create(
            model=name, messages=messages, temperature=0, max_tokens=8
        )
        assert answer.choices[0].message.content == expected
        assert answer.usage.prompt_tokens == prompt_tokens
        with pytest.raises(openai.BadRequestError) as error, open(release.a, "rb") as clip:
            client.audio.transcriptions.create(model=name, file=clip)
        assert error.value.param == "model" and "qwen2-audio checkpoint" in error.value.message
