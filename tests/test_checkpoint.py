"""Weights in and out: released folder layout round trip and strict validation.

Also stage-1 init from Whisper + Qwen.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import whisper.model
from safetensors.torch import save_file
from torch.testing import assert_close

from qwen_audio.checkpoint import (
    CheckpointError,
    init_stage1,
    load_model,
    load_pretrained,
    load_tokenizer,
    read_state_dict,
    save_pretrained,
)
from qwen_audio.config import ConfigError, QwenAudioConfig
from qwen_audio.convert.__main__ import main as convert_main
from qwen_audio.model import QwenAudio

# The released Qwen/Qwen-Audio config.json values the model reads (spec §2, §3).
RELEASED_CONFIG = {
    "architectures": ["QWenLMHeadModel"],
    "model_type": "qwen",
    "bf16": False,
    "fp16": False,
    "fp32": False,
    "audio": {
        "n_mels": 80,
        "n_ctx": 1500,
        "n_state": 1280,
        "n_head": 20,
        "n_layer": 32,
        "output_dim": 4096,
        "avg_pool": True,
        "add_audio_bos_eos_token": True,
        "audio_start_id": 155163,
    },
    "emb_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "kv_channels": 128,
    "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 2048,
    "no_bias": True,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "seq_length": 2048,
    "tie_word_embeddings": False,
    "use_dynamic_ntk": True,
    "use_logn_attn": True,
    "use_flash_attn": "auto",
    "vocab_size": 155947,
    "torch_dtype": "bfloat16",
}


def test_released_config_reads_as_the_preset_and_writes_back():
    config = QwenAudioConfig.from_hf_config(RELEASED_CONFIG)
    assert config == QwenAudioConfig.from_name("qwen-audio")
    assert config.decoder.layer_norm_epsilon == 1e-6 and config.audio_end_id == 155164
    written = config.to_hf_config()
    assert {k: written[k] for k in RELEASED_CONFIG if k in written} == {
        k: v for k, v in RELEASED_CONFIG.items() if k in written
    }
    assert QwenAudioConfig.from_hf_config(written) == config


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="missing key 'audio.n_ctx'"):
        audio = {k: v for k, v in RELEASED_CONFIG["audio"].items() if k != "n_ctx"}
        QwenAudioConfig.from_hf_config({**RELEASED_CONFIG, "audio": audio})
    with pytest.raises(ConfigError, match="no_bias=False"):
        QwenAudioConfig.from_hf_config({**RELEASED_CONFIG, "no_bias": False})
    with pytest.raises(ConfigError, match="config file not found"):
        QwenAudioConfig.from_hf_config(tmp_path)
    with pytest.raises(ConfigError, match="unknown model preset 'qwen-vl'"):
        QwenAudioConfig.from_name("qwen-vl")


@pytest.fixture(scope="module")
def tiny_model() -> QwenAudio:
    torch.manual_seed(0)
    return QwenAudio(QwenAudioConfig.from_name("tiny", attention_backend="sdpa")).eval()


def _logits(model: QwenAudio) -> torch.Tensor:
    start = model.config.audio_start_id
    ids = torch.tensor([[3, start] + [9] * 25 + [start + 1, 4, 5]])
    with torch.no_grad():
        return model(
            ids, audio_mel=torch.ones(1, 80, 100), audio_mel_lengths=torch.tensor([100])
        ).logits


def test_save_and_load_round_trip_in_the_released_layout(tiny_model, tmp_path):
    tokenizer = tmp_path / "qwen.tiktoken"
    tokenizer.write_bytes(b"IQ== 0\n")
    save_pretrained(tiny_model, tmp_path / "out", tokenizer_file=tokenizer, max_shard_size="1MB")
    files = sorted(os.listdir(tmp_path / "out"))
    assert (
        "model.safetensors.index.json" in files
        and "config.json" in files
        and "qwen.tiktoken" in files
    )
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert "transformer.audio.positional_embedding" in index["weight_map"]
    loaded = load_pretrained(tmp_path / "out")
    assert loaded.config == dataclasses.replace(
        tiny_model.config, name="out", attention_backend="auto"
    )
    for key, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    loaded.transformer.attention_backend = loaded.encoder.attention_backend = "sdpa"
    assert_close(_logits(loaded.eval()), _logits(tiny_model))


def test_load_model_returns_model_and_tokenizer(tiny_model, tmp_path):
    from qwen_audio.tokenizer import DEMO_RANKS_FILE, QwenAudioTokenizer

    save_pretrained(tiny_model, tmp_path, tokenizer_file=DEMO_RANKS_FILE)
    model, tokenizer = load_model(tmp_path)
    assert isinstance(tokenizer, QwenAudioTokenizer)
    assert (
        tokenizer.audio_start == model.config.audio_start_id
    )  # the tiny preset fits the demo tokenizer
    assert model.config.decoder == tiny_model.config.decoder


def _save_single(state: dict[str, torch.Tensor], folder, config: QwenAudioConfig) -> None:
    os.makedirs(folder, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, os.path.join(folder, "model.safetensors")
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config.to_hf_config(), f)


def test_missing_unexpected_and_misshaped_keys_are_listed(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    del state["transformer.h.1.mlp.w2.weight"]
    state["transformer.h.0.attn.c_attn.bias"] = torch.zeros(5)
    state["transformer.audio.extra"] = torch.zeros(1)
    _save_single(state, tmp_path, tiny_model.config)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    message = str(err.value)
    assert "missing keys (1): transformer.h.1.mlp.w2.weight" in message
    assert "unexpected keys (1): transformer.audio.extra" in message
    assert "transformer.h.0.attn.c_attn.bias: checkpoint (5,) vs model (192,)" in message


def test_truncated_safetensors_file_is_named(tiny_model, tmp_path):
    _save_single(tiny_model.state_dict(), tmp_path, tiny_model.config)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors \(truncated or corrupt"):
        load_pretrained(tmp_path)


def test_pickle_shards_need_allow_pickle(tiny_model, tmp_path):
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        read_state_dict(tmp_path)
    state = read_state_dict(tmp_path, allow_pickle=True)
    assert torch.equal(state["lm_head.weight"], tiny_model.lm_head.weight)


def _whisper_checkpoint(path, config: QwenAudioConfig) -> whisper.model.Whisper:
    enc = config.encoder
    dims = whisper.model.ModelDimensions(
        n_mels=enc.n_mels,
        n_audio_ctx=enc.n_ctx,
        n_audio_state=enc.n_state,
        n_audio_head=enc.n_head,
        n_audio_layer=enc.n_layer,
        n_vocab=40,
        n_text_ctx=8,
        n_text_state=16,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.manual_seed(1)
    model = whisper.model.Whisper(dims).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return model


def test_init_stage1_from_whisper_and_qwen(tiny_model, tmp_path):
    config = tiny_model.config
    reference = _whisper_checkpoint(tmp_path / "whisper.pt", config)
    qwen_vocab = 7000
    qwen_state = {
        k: v for k, v in tiny_model.state_dict().items() if not k.startswith("transformer.audio.")
    }
    for key in ("transformer.wte.weight", "lm_head.weight"):
        qwen_state[key] = qwen_state[key][:qwen_vocab]
    save_file(
        {k: v.contiguous() for k, v in qwen_state.items()}, str(tmp_path / "model.safetensors")
    )

    model = init_stage1(tmp_path / "whisper.pt", tmp_path, config, dtype=torch.float32).eval()
    model.encoder.attention_backend = "sdpa"
    mel = torch.randn(1, 80, 2 * config.encoder.n_ctx)
    with torch.no_grad():
        frames, _ = model.encoder.frames(mel, torch.tensor([mel.shape[-1]]))
        expected = reference.encoder(mel)  # openai-whisper: blocks then ln_post, no pool
    assert_close(model.encoder.ln_post(frames), expected, atol=1e-5, rtol=1e-5)
    wte = model.transformer.wte.weight
    assert torch.equal(wte[:qwen_vocab], qwen_state["transformer.wte.weight"])
    assert torch.equal(
        model.transformer.h[1].mlp.c_proj.weight, tiny_model.transformer.h[1].mlp.c_proj.weight
    )
    new_rows = wte[qwen_vocab:]
    assert (
        new_rows.shape[0] == config.decoder.vocab_size - qwen_vocab
        and torch.isfinite(new_rows).all()
    )
    assert_close(
        new_rows.mean(0), wte[:qwen_vocab].mean(0), atol=0.05, rtol=0
    )  # drawn around the old rows' mean
    assert_close(
        new_rows.std(0), wte[:qwen_vocab].std(0), atol=0, rtol=0.2
    )  # distinct rows, not copies of the mean
    assert model.encoder.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)

    qwen_state["transformer.ln_f.weight"] = torch.ones(3)
    save_file(
        {k: v.contiguous() for k, v in qwen_state.items()}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match="transformer.ln_f.weight: checkpoint \\(3,\\)"):
        init_stage1(tmp_path / "whisper.pt", tmp_path, config)


def test_convert_cli_writes_a_loadable_folder(tiny_model, tmp_path, capsys):
    config = tiny_model.config
    _whisper_checkpoint(tmp_path / "whisper.pt", config)
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    save_file(
        {
            k: v.contiguous()
            for k, v in tiny_model.state_dict().items()
            if not k.startswith("transformer.audio.")
        },
        str(qwen / "model.safetensors"),
    )
    (qwen / "qwen.tiktoken").write_bytes(b"IQ== 0\n")
    out = tmp_path / "stage1"
    assert (
        convert_main(
            [
                "init-stage1",
                "--whisper",
                str(tmp_path / "whisper.pt"),
                "--qwen",
                str(qwen),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert (out / "qwen.tiktoken").read_bytes() == b"IQ== 0\n"
    assert load_pretrained(out).encoder.conv1.weight.dtype == torch.float32
    with pytest.raises(SystemExit) as exit_info:
        convert_main(
            [
                "init-stage1",
                "--whisper",
                str(tmp_path / "missing.pt"),
                "--qwen",
                str(qwen),
                "--out",
                str(out),
                "--preset",
                "tiny",
            ]
        )
    assert exit_info.value.code == 1
    assert "Whisper checkpoint not found" in capsys.readouterr().err


def _modes(folder) -> dict[str, int]:
    return {
        name: os.stat(os.path.join(folder, name)).st_mode & 0o777
        for name in ["", *os.listdir(folder)]
    }


def test_export_keeps_foreign_files_replaces_its_own_and_follows_the_umask(tiny_model, tmp_path):
    from qwen_audio.tokenizer import DEMO_RANKS_FILE

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_pretrained(tiny_model, out, tokenizer_file=DEMO_RANKS_FILE, max_shard_size="1MB")
    assert (out / "notes.txt").read_text() == "mine" and (
        out / "model.safetensors.index.json"
    ).is_file()
    previous = os.umask(0o027)
    try:
        save_pretrained(
            tiny_model, out, tokenizer_file=DEMO_RANKS_FILE
        )  # one file now: the shards are stale
        save_pretrained(tiny_model, tmp_path / "fresh")
    finally:
        os.umask(previous)
    assert sorted(os.listdir(out)) == [
        "config.json",
        "model.safetensors",
        "notes.txt",
        "qwen.tiktoken",
    ]
    assert sorted(os.listdir(tmp_path)) == ["fresh", "out"]  # no staging folder left behind
    assert _modes(tmp_path / "fresh") == {
        "": 0o750,
        "config.json": 0o640,
        "model.safetensors": 0o640,
    }
    assert _modes(out)["model.safetensors"] == 0o640 and _modes(out)["notes.txt"] == 0o644
    loaded = load_pretrained(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny_model.state_dict().items())


def test_export_to_an_unwritable_place_is_refused_up_front(tiny_model, tmp_path):
    from qwen_audio.checkpoint import check_writable

    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"cannot export to .*file/out"):
        check_writable(tmp_path / "file" / "out")
    with pytest.raises(CheckpointError, match=r"cannot export to .*file: .*is a file"):
        save_pretrained(tiny_model, tmp_path / "file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CheckpointError, match="Permission denied"):
            check_writable(locked / "out")


def test_convert_keeps_foreign_files_in_out(tiny_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(), out.mkdir()
    (src / "config.json").write_text(json.dumps(tiny_model.config.to_hf_config()))
    torch.save(tiny_model.state_dict(), src / "pytorch_model.bin")
    (out / "README.md").write_text("mine")
    assert convert_main(["to-safetensors", "--src", str(src), "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == "mine" and (out / "model.safetensors").is_file()


def _folder_with_tokenizer(model: QwenAudio, folder, ranks: bytes | None) -> None:
    save_pretrained(model, folder)
    if ranks is not None:
        (folder / "qwen.tiktoken").write_bytes(ranks)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (None, r"qwen\.tiktoken is missing"),
        (0, r"qwen\.tiktoken is empty"),
        (
            2048,
            r"holds 2048 ranks, so <audio> would get id 5568; the config's audio_start_id 7616 .* needs 4096 ranks",
        ),
        (-1, r"not a complete ranks file \(truncated\?\)"),  # cut inside the last line
    ],
)
def test_a_missing_empty_or_truncated_tokenizer_is_named(tiny_model, tmp_path, cut, message):
    from qwen_audio.tokenizer import DEMO_RANKS_FILE

    lines = DEMO_RANKS_FILE.read_bytes().splitlines(keepends=True)
    ranks = {None: None, 0: b"", 2048: b"".join(lines[:2048]), -1: b"".join(lines)[:-5]}[cut]
    _folder_with_tokenizer(tiny_model, tmp_path, ranks)
    for load in (load_model, load_tokenizer):
        with pytest.raises(CheckpointError, match=message):
            load(str(tmp_path))


def test_the_complete_tokenizer_fits_its_config(tiny_model, tmp_path):
    from qwen_audio.tokenizer import DEMO_RANKS_FILE

    _folder_with_tokenizer(tiny_model, tmp_path, DEMO_RANKS_FILE.read_bytes())
    _, tokenizer = load_model(tmp_path)
    assert (tokenizer.audio_start, tokenizer.n_vocab) == (
        7616,
        7618,
    )  # the tiny preset's ids (config.py)


def test_export_callback_checks_the_folder_when_fit_starts_and_keeps_foreign_files(
    tiny_model, tmp_path
):
    from types import SimpleNamespace

    from qwen_audio.lit import ExportPretrained
    from qwen_audio.tokenizer import DEMO_RANKS_FILE

    trainer = SimpleNamespace(
        is_global_zero=True,
        datamodule=SimpleNamespace(tokenizer=SimpleNamespace(path=str(DEMO_RANKS_FILE))),
        strategy=SimpleNamespace(broadcast=lambda value: value, barrier=lambda: None),
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot export to"):
        ExportPretrained(str(tmp_path / "file" / "out")).setup(trainer, None, "fit")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    callback = ExportPretrained(str(out))
    callback.setup(trainer, None, "fit")
    callback.on_fit_end(trainer, SimpleNamespace(model=tiny_model, lora=None))
    assert (out / "notes.txt").read_text() == "mine"
    assert load_model(out)[1].n_vocab == 7618
