"""Qwen2-Audio against transformers: a tiny random ``Qwen2AudioForConditionalGeneration`` written by
its own ``save_pretrained`` (fp32), its ``Qwen2AudioProcessor`` and
``WhisperFeatureExtractor(feature_size=128)``, and the committed demo ``tokenizer.json`` read by
transformers' fast tokenizer. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
import whisper
from safetensors.torch import load_file, save_file
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from qwen_audio.audio import SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from qwen_audio.batching import encode_prompts
from qwen_audio.chat import build_context, chat
from qwen_audio.checkpoint import CheckpointError, load_model, save_pretrained
from qwen_audio.config import ConfigError, QwenAudioConfig
from qwen_audio.generate import GenerationConfig, generate
from qwen_audio.generate.__main__ import main
from qwen_audio.prompts import DEFAULT_SYSTEM
from qwen_audio.qwen2_audio.hf_config import config_from_hf
from qwen_audio.qwen2_audio.tokenizer import (
    DEMO_TOKENIZER_FILE,
    Qwen2AudioTokenizer,
    feature_lengths,
)

STOPS = [4098, 4096]  # <|im_end|>, <|endoftext|> of the demo tokenizer.json
CAPTION = "<audio>{a}</audio>Generate the caption in English:"
CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: <audio>{a}</audio>\n"
    "Audio 2: <audio>{b}</audio>\nWhat differs?<|im_end|>\n<|im_start|>assistant\n"
)
TEXT_ONLY = "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\n"
HF_AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny random Qwen2-Audio folder written by transformers, and two float wavs.

    It also gives the HF model and processor.
    """
    folder = tmp_path_factory.mktemp("qwen2_audio")
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
            rope_theta=50000.0,
        ),
        audio_token_index=4099,
    )
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():
        for (
            parameter
        ) in model.parameters():  # well away from the 0.02 init, so logits and tokens discriminate
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    shutil.copyfile(DEMO_TOKENIZER_FILE, folder / "tokenizer.json")
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": STOPS, "pad_token_id": 4096})
    )
    rng = np.random.default_rng(0)
    waves = {}
    for name, samples in (
        ("a.wav", 20_837),
        ("b.wav", 37_120),
    ):  # odd length: the ceil(samples / 160) rule counts
        t = np.arange(samples) / SAMPLE_RATE
        chirp = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t))
        waves[name] = (chirp + 0.05 * rng.standard_normal(samples)).astype(np.float32)
        soundfile.write(folder / name, waves[name], SAMPLE_RATE, subtype="FLOAT")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer
    )
    return dict(
        folder=str(folder),
        model=model,
        processor=processor,
        waves=waves,
        a=str(folder / "a.wav"),
        b=str(folder / "b.wav"),
    )


def _hf_inputs(release, prompt: str):
    """The processor's inputs for our prompt.

    Each <audio>PATH</audio> becomes the release's marker text.
    """
    paths = [p for p in (release["a"], release["b"]) if f"<audio>{p}</audio>" in prompt]
    paths.sort(key=prompt.index)
    text = prompt
    for path in paths:
        text = text.replace(f"<audio>{path}</audio>", HF_AUDIO)
    audio = [release["waves"][os.path.basename(p)] for p in paths] or None
    return release["processor"](
        text=text, audio=audio, sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )


def _prompts(release) -> list[str]:
    return [CAPTION.format(a=release["a"]), CHAT.format(a=release["a"], b=release["b"]), TEXT_ONLY]


def _hf_greedy(release, prompt: str, max_new_tokens: int) -> list[int]:
    inputs = _hf_inputs(release, prompt)
    out = (
        release["model"]
        .generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=STOPS,
            pad_token_id=4096,
        )[0, inputs["input_ids"].shape[1] :]
        .tolist()
    )
    return out[
        : next((i for i, t in enumerate(out) if t in STOPS), len(out))
    ]  # ours never returns the stop token


def test_presets_are_the_public_configs_through_transformers_defaults():
    # The public config.json of Qwen2-Audio-7B(-Instruct) sets these text_config keys; the rest are
    # transformers'.
    hub = Qwen2AudioConfig(
        text_config=dict(
            vocab_size=156032,
            intermediate_size=11008,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
        )
    ).to_dict()
    for name in ("qwen2-audio-7b", "qwen2-audio-7b-instruct"):
        preset = QwenAudioConfig.from_name(name)
        assert dataclasses.replace(config_from_hf(hub, "config.json"), name=name) == preset
        assert (preset.encoder.n_mels, preset.decoder.vocab_size, preset.audio_start_id) == (
            128,
            156032,
            151647,
        )
    tiny = QwenAudioConfig.from_name("qwen2-audio-tiny")
    tokenizer = Qwen2AudioTokenizer.demo()
    assert (
        tiny.decoder.vocab_size == tokenizer.n_vocab
        and tiny.audio_start_id == tokenizer.audio_start
    )


def test_tokenizer_encodes_like_transformers_fast_tokenizer():
    hf = PreTrainedTokenizerFast(tokenizer_file=str(DEMO_TOKENIZER_FILE))
    ours = Qwen2AudioTokenizer.demo()
    texts = (
        TEXT_ONLY,
        "héllo 你好<|endoftext|>  two  spaces\n\n<|im_end|>",
        "<|audio_bos|><|AUDIO|><|audio_eos|>x",
    )
    for text in texts:
        assert ours.encode(text, allowed_special="all") == hf(text)["input_ids"]
        assert ours.decode(ours.encode(text, allowed_special="all")) == text
    # Not allowed: the special-token text stays text.
    assert ours.encode("<|im_end|>") == hf("<|im_end|>", split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("samples", [1, 159, 160, 161, 16_000, 20_837, 480_000])
def test_feature_lengths_follow_the_processor(samples, release):
    audio = np.zeros(samples, dtype=np.float32)
    inputs = release["processor"](
        text=HF_AUDIO, audio=[audio], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    lengths = feature_lengths(samples)
    assert lengths.mel_frames == int(inputs["feature_attention_mask"].sum())
    assert lengths.audio_tokens == int((inputs["input_ids"] == 4099).sum())


def test_128_bin_log_mel_matches_whisper_and_transformers(release):
    extractor = WhisperFeatureExtractor(feature_size=128)
    for wave in release["waves"].values():
        ours = log_mel_spectrogram(pad_or_trim(torch.from_numpy(wave)), 128)
        hf = extractor(
            wave, sampling_rate=SAMPLE_RATE, padding="max_length", return_tensors="np"
        ).input_features[0]
        torch.testing.assert_close(ours, torch.from_numpy(hf), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours,
            whisper.log_mel_spectrogram(pad_or_trim(torch.from_numpy(wave)), 128),
            atol=1e-5,
            rtol=0,
        )


def test_logits_match_transformers(release):
    model, tokenizer = load_model(release["folder"])
    for prompt in _prompts(release):
        inputs = _hf_inputs(release, prompt)
        batch = encode_prompts(tokenizer, [prompt], 8192, model.config.encoder.n_mels)
        assert batch.input_ids.tolist() == inputs["input_ids"].tolist()
        with torch.no_grad():
            ours = model(
                batch.input_ids,
                audio_mel=batch.audio_mel,
                audio_mel_lengths=batch.audio_mel_lengths,
            ).logits
            hf = release["model"](**inputs).logits
        assert hf.abs().max() > 1.0
        torch.testing.assert_close(ours, hf, atol=1e-5, rtol=0)


def test_generate_cli_gives_transformers_greedy_tokens(release, capsys):
    prompts = _prompts(release)
    main(
        [
            "--checkpoint",
            release["folder"],
            "--greedy",
            "--json",
            "--max-new-tokens",
            "8",
            *[arg for prompt in prompts for arg in ("--prompt", prompt)],
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["ids"] for line in lines] == [_hf_greedy(release, prompt, 8) for prompt in prompts]
    assert len(set(map(tuple, (line["ids"] for line in lines)))) == 3


def test_left_padded_batch_of_mixed_length_audios_gives_batch_one_tokens(release):
    model, tokenizer = load_model(release["folder"])
    prompts = [CAPTION.format(a=release["a"]), "Audio 1: " + CAPTION.format(a=release["b"])]
    config = GenerationConfig.base(tokenizer, do_sample=False, max_new_tokens=8)

    def run(batch_prompts):
        batch = encode_prompts(tokenizer, batch_prompts, 8192, model.config.encoder.n_mels)
        return generate(
            model,
            batch.input_ids,
            batch.attention_mask,
            config,
            vocab_size=tokenizer.n_vocab,
            audio_mel=batch.audio_mel,
            audio_mel_lengths=batch.audio_mel_lengths,
        )

    alone = [run([prompt])[0] for prompt in prompts]
    assert run(prompts) == alone
    assert alone == [_hf_greedy(release, prompt, 8) for prompt in prompts]


def test_save_pretrained_round_trips_through_transformers(release, tmp_path):
    model, tokenizer = load_model(release["folder"])
    out = tmp_path / "saved"
    save_pretrained(model, out, tokenizer_file=tokenizer.path, max_shard_size="100KB")
    assert {
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "generation_config.json",
        "preprocessor_config.json",
    } <= set(os.listdir(out))
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(out).eval()
    original = release["model"].state_dict()
    assert reloaded.state_dict().keys() == original.keys()
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    assert reloaded.config.text_config.rope_parameters["rope_theta"] == 50000.0
    again, again_tokenizer = load_model(str(out))
    assert again.config == model.config and again_tokenizer.stop_ids == tuple(STOPS)
    extractor = WhisperFeatureExtractor.from_pretrained(out)
    assert extractor.feature_size == 128


def test_refusals_name_the_file_and_key(release, tmp_path):
    bad = tmp_path / "gqa"
    shutil.copytree(release["folder"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["text_config"]["num_key_value_heads"] = 2
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"gqa/config.json: text_config.num_key_value_heads=2"):
        load_model(str(bad))
    mels = tmp_path / "mels"
    shutil.copytree(release["folder"], mels)
    (mels / "preprocessor_config.json").write_text(json.dumps({"feature_size": 80}))
    with pytest.raises(
        ValueError, match=r"mels/preprocessor_config.json: feature_size=80 is not supported"
    ):
        load_model(str(mels))
    extra = tmp_path / "extra"
    shutil.copytree(release["folder"], extra)
    state = load_file(extra / "model.safetensors")
    state["audio_tower.extra.weight"] = torch.zeros(1)
    save_file(state, extra / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"extra/model.safetensors: key 'audio_tower.extra.weight'"
    ):
        load_model(str(extra))
    del (
        state["audio_tower.extra.weight"],
        state["language_model.model.layers.1.self_attn.v_proj.bias"],
    )
    save_file(state, extra / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"missing key 'language_model.model.layers.1.self_attn.v_proj.bias'"
    ):
        load_model(str(extra))


def test_chat_follows_the_release_chat_template(release):
    model, tokenizer = load_model(release["folder"])
    config = GenerationConfig.chat(tokenizer, do_sample=False, max_new_tokens=6)
    first = f"Audio 1: <audio>{release['a']}</audio>\nWhat's that sound?"
    response, history = chat(model, tokenizer, first, config=config)
    second = f"Audio 2: <audio>{release['b']}</audio>\nAnd this one?"
    context = build_context(tokenizer, second, history, DEFAULT_SYSTEM)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": release["a"]},
                {"type": "text", "text": "What's that sound?"},
            ],
        },
        {"role": "assistant", "content": response},
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": release["b"]},
                {"type": "text", "text": "And this one?"},
            ],
        },
    ]
    text = release["processor"].apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    inputs = release["processor"](
        text=text,
        audio=[release["waves"]["a.wav"], release["waves"]["b.wav"]],
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
    )
    assert context.ids == inputs["input_ids"][0].tolist()
    hf = release["model"].generate(
        **inputs, max_new_tokens=6, do_sample=False, eos_token_id=STOPS, pad_token_id=4096
    )
    new = hf[0, inputs["input_ids"].shape[1] :].tolist()
    ends = [
        i for i, t in enumerate(new) if t in (tokenizer.im_end, tokenizer.im_start, tokenizer.eod)
    ]
    expected = tokenizer.decode(new[: ends[0]] if ends else new).strip()
    assert chat(model, tokenizer, second, history, config=config)[0] == expected
