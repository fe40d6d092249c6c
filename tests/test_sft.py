"""Stage 2 (SFT): conversation files and their label mask, the audio/text mixing, LoRA, the recipe.

LoRA goes through peft.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import soundfile
import torch

from qwen_audio.checkpoint import CheckpointError, load_model, save_pretrained
from qwen_audio.config import QwenAudioConfig
from qwen_audio.data.chat_datamodule import ChatDataModule
from qwen_audio.data.conversations import (
    Conversation,
    ConversationDataset,
    Message,
    read_conversations,
)
from qwen_audio.data.datamodule import AudioTextDataModule
from qwen_audio.data.demo import DemoChat
from qwen_audio.data.manifest import ManifestError
from qwen_audio.data.sampler import DurationBucketSampler
from qwen_audio.lit import callbacks
from qwen_audio.lit.lora import LoraOptions, add_lora, lora_state_dict, merge_lora
from qwen_audio.lit.module import QwenAudioModule
from qwen_audio.model import QwenAudio, label_positions, token_losses
from qwen_audio.prompts import IGNORE_INDEX
from qwen_audio.tokenizer import DEMO_RANKS_FILE, QwenAudioTokenizer
from recipes.sft import main

REPO = Path(__file__).resolve().parents[1]
SFT_CONFIGS = sorted((REPO / "recipes" / "configs" / "sft").glob("*.yaml"))


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def user(*content) -> dict:
    text = len(content) == 1 and isinstance(content[0], str)
    return {"role": "user", "content": content[0] if text else list(content)}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    soundfile.write(
        path, np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32), 16000
    )
    return path


def test_label_mask_covers_exactly_the_assistant_tokens(tmp_path, released):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    user("What is 2+2?"),
                    assistant("Four."),
                    user("And 3+3?"),
                    assistant("Six."),
                ]
            }
        ],
    )
    (conversation,) = read_conversations(path)
    example = conversation.encode(released, max_length=2048)
    # spec §7 ChatML, cut where the loss switches on and off: each reply and its <|im_end|> are
    # learned
    pieces = [
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n",
            False,
        ),
        ("Four.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Six.<|im_end|>", True),
    ]
    encode = released.encoding.encode  # tiktoken itself, on the whole ChatML text of each piece
    expected_ids = [i for text, _ in pieces for i in encode(text, allowed_special="all")]
    expected_labels = [
        i if learned else IGNORE_INDEX
        for text, learned in pieces
        for i in encode(text, allowed_special="all")
    ]
    assert (
        expected_ids[:2] == [151644, 8948] and expected_ids.count(151645) == 5
    )  # spec: <|im_start|>, im_end
    assert (
        example.ids
        == expected_ids
        == encode("".join(text for text, _ in pieces), allowed_special="all")
    )
    assert example.labels == expected_labels


def test_dataset_learns_only_replies_with_audio_expanded(tmp_path, clip, demo):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "id": "pair",
                "system": "Be brief.",
                "messages": [
                    user(
                        {"audio": clip.name},
                        {"audio": str(clip)},
                        {"text": "Which audio is speech?"},
                    ),
                    assistant("Neither."),
                    user("Sure?"),
                    assistant("Yes."),
                ],
            },
            {"messages": [user("Hello!"), assistant("Hi.")]},
        ],
    )
    sample, text_only = ConversationDataset(read_conversations(path), demo)
    learned = sample.labels != IGNORE_INDEX
    assert demo.decode(sample.input_ids[learned]) == "Neither.<|im_end|>Yes.<|im_end|>"
    assert torch.equal(sample.labels[learned], sample.input_ids[learned])
    assert sample.task == "chat" and text_only.task == "text" and text_only.mels == []
    # 0.5 s at 16 kHz: 50 mel frames; 12 encoder tokens + <audio>, </audio> per clip (spec §1)
    assert sample.mel_lengths == [50, 50] and (sample.input_ids == demo.audio_pad).sum() == 2 * 12
    assert "Audio 1:<audio>" in demo.decode(sample.input_ids) and "Audio 2:<audio>" in demo.decode(
        sample.input_ids
    )


GOOD = {"messages": [user("hi"), assistant("hello")]}
BAD_LINES = [
    ('{"messages": [', None, "malformed JSON: Expecting value (column 15)"),
    (
        {"messages": [user("hi")]},
        "messages",
        "missing assistant turn: the last turn (messages[0]) is the user's, with no reply to learn",
    ),
    (
        {"messages": [user("hi"), assistant("a"), user("more?")]},
        "messages",
        "missing assistant turn: the last turn (messages[2]) is the user's, with no reply to learn",
    ),
    (
        {"messages": [user({"audio": "missing.wav"}, {"text": "what?"}), assistant("x")]},
        "messages[0].content[0].audio",
        "file not found: {folder}/missing.wav",
    ),
    (
        {"messages": [{"role": "bot", "content": "hi"}, assistant("x")]},
        "messages[0].role",
        "unknown role 'bot'; roles are user and assistant",
    ),
    (
        {"messages": [{"role": "system", "content": "be nice"}, user("hi"), assistant("x")]},
        "messages[0].role",
        "unknown role 'system'; roles are user and assistant (a system prompt goes in the top-level 'system' field)",
    ),
    (
        {"messages": [assistant("x"), user("hi")]},
        "messages[0].role",
        "is 'assistant', expected 'user': turns alternate user, assistant, starting with the user",
    ),
    (
        {"messages": [user("<audio>a.wav</audio>hi"), assistant("x")]},
        "messages[0].content",
        'holds an <audio> tag; give audio as an {"audio": path} item',
    ),
    (
        {"messages": [user("hi"), assistant("")]},
        "messages[1].content",
        "must be non-empty text, got ''",
    ),
    (
        {"messages": [user({"image": "a.png"}), assistant("x")]},
        "messages[0].content[0]",
        "must be {\"audio\": path} or {\"text\": ...}, got {'image': 'a.png'}",
    ),
    ({**GOOD, "sytem": "x"}, "sytem", "unknown field (known: id, system, messages)"),
    ({"id": "x"}, "messages", "must be a non-empty list of turns, got None"),
]


@pytest.mark.parametrize("line, field, reason", BAD_LINES, ids=[r[:40] for _, _, r in BAD_LINES])
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, reason):
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD, line])
    with pytest.raises(ManifestError) as info:
        read_conversations(path)
    reason = reason.replace("{folder}", str(tmp_path))
    assert str(info.value) == f"{path}:2: {field + ': ' if field else ''}{reason}"


def test_too_long_conversation_names_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl", [GOOD, {"messages": [user("word " * 300), assistant("ok")]}]
    )
    module = ChatDataModule(train=[str(path)], max_length=64, max_tokens=64)
    module.connect(QwenAudioTokenizer.demo(), n_mels=80)
    with pytest.raises(ValueError, match=rf"^{path}:2: messages: the example is \d+ tokens"):
        module.setup("fit")


@pytest.mark.parametrize("ratio, texts, passes", [(0.5, 20, 2), (0.2, 8, 1), (None, 10, 1)])
def test_text_ratio_sets_the_share_of_pure_text_conversations(tmp_path, clip, ratio, texts, passes):
    audio = [
        {"messages": [user({"audio": clip.name}, {"text": f"q{i}"}), assistant("a")]}
        for i in range(30)
    ]
    text = [{"messages": [user(f"t{i}"), assistant("b")]} for i in range(10)]
    path = write_jsonl(
        tmp_path / "chat.jsonl", [line for pair in zip(audio, text) for line in pair] + audio[10:]
    )
    module = ChatDataModule(train=[str(path)], text_ratio=ratio, max_tokens=2048, seed=3)
    module.connect(QwenAudioTokenizer.demo(), n_mels=80)
    module.setup("fit")
    drawn = [i for batch in module.train_dataloader().batch_sampler for i in batch]
    # an epoch keeps its 40 draws; the text group holds global indices 30..39 (ConcatDataset order)
    drawn_text = Counter(i for i in drawn if i >= 30)
    assert len(drawn) == 40 and sum(drawn_text.values()) == texts
    # up-sampled in whole passes over the group, down-sampled without repeats
    assert set(drawn_text.values()) == {passes}


def test_text_ratio_without_text_conversations_is_an_error(tmp_path, clip):
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [user({"audio": str(clip)}), assistant("a")]}]
    )
    with pytest.raises(
        ValueError, match="text_ratio is 0.2 but the training files .* hold no pure-text"
    ):
        data = ChatDataModule(train=[str(path)], text_ratio=0.2)
        data.connect(QwenAudioTokenizer.demo(), n_mels=80)
        data.setup("fit")


def tiny_model(seed: int = 0) -> QwenAudio:
    torch.manual_seed(seed)
    return QwenAudio(QwenAudioConfig.from_name("tiny")).eval()


def model_inputs(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 7000, (2, 9), generator=generator)}


def test_lora_trains_only_the_adapters_and_starts_as_the_base_model():
    model = tiny_model()
    base_logits = model(**model_inputs()).logits
    model.set_trainable(encoder=False, decoder=True)
    add_lora(model, LoraOptions(rank=4, alpha=8, dropout=0.1))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # tiny: hidden 64, SwiGLU halves 256 -> 128; per block c_attn 64->192, c_proj 64->64, w1/w2
    # 64->128, c_proj 128->64
    per_block = 4 * ((64 + 192) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert (
        all(".lora_A." in n or ".lora_B." in n for n in trainable) and len(trainable) == 2 * 2 * 5
    )
    assert all(n.startswith("transformer.h.") for n in trainable)
    assert sum(trainable.values()) == 2 * per_block
    torch.testing.assert_close(model(**model_inputs()).logits, base_logits, rtol=0, atol=0)


def test_lora_layer_is_the_low_rank_update_and_merges_into_the_released_layout():
    model = tiny_model()
    keys = set(model.state_dict())
    add_lora(model, LoraOptions(rank=4, alpha=8, dropout=0.0))
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.5)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(3, 64, dtype=torch.float64)
    base, a, b = layer.base_layer, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = (
        x @ base.weight.double().T + base.bias.double() + (8 / 4) * x @ a.double().T @ b.double().T
    )
    torch.testing.assert_close(layer(x.float()).double(), expected, rtol=1e-5, atol=1e-5)
    unmerged = model(**model_inputs()).logits
    merge_lora(model)
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(**model_inputs()).logits, unmerged, rtol=1e-4, atol=1e-5)


def test_a_released_checkpoint_loads_into_the_lora_model():
    model, wrapped = tiny_model(0), tiny_model(1)
    add_lora(wrapped, LoraOptions(rank=4))
    wrapped.load_state_dict(lora_state_dict(wrapped, model.state_dict()), strict=True)
    torch.testing.assert_close(
        wrapped(**model_inputs()).logits, model(**model_inputs()).logits, rtol=0, atol=0
    )


def test_lora_needs_train_decoder():
    with pytest.raises(
        ValueError, match="lora adapts the decoder alone: it needs train='decoder', got train='all'"
    ):
        QwenAudioModule(train="all", lora=LoraOptions())


@pytest.mark.parametrize("config", SFT_CONFIGS, ids=lambda p: p.name)
def test_every_sft_config_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr().out
    assert exit_info.value.code in (0, None)
    assert "train: decoder" in printed and "text_ratio:" in printed and "init_from:" in printed
    if config.name == "qwen_audio_chat.yaml":
        assert "ModelParallelStrategy" in printed and "precision: bf16-mixed" in printed
        assert "activation_checkpointing: true" in printed and "lr: 1.0e-05" in printed
    if config.name == "qwen_audio_chat_lora.yaml":
        assert "rank: 64" in printed and "precision: bf16-true" in printed


@pytest.fixture(scope="module")
def initial_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    save_pretrained(tiny_model(5), folder, tokenizer_file=DEMO_RANKS_FILE)
    return folder


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-corpus")


@pytest.mark.parametrize("lora", [False, True], ids=["decoder", "lora"])
def test_demo_config_fits_one_step_with_the_encoder_frozen(
    tmp_path, initial_folder, demo_dir, monkeypatch, capsys, lora
):
    monkeypatch.setenv("QWEN_AUDIO_DEMO_DIR", str(demo_dir))
    override = tmp_path / "override.yaml"
    override.write_text(
        textwrap.dedent(f"""\
        trainer:
          max_steps: 1
          limit_val_batches: 0
          num_sanity_val_steps: 0
          enable_progress_bar: false
          enable_checkpointing: false
          default_root_dir: {tmp_path}
          logger: false
          callbacks:
            - class_path: qwen_audio.lit.ChatTranscript
              init_args: {{per_group: 1, num_questions: 4, max_new_tokens: 3}}
        model:
          preset: tiny
          init_from: {initial_folder}
          lr: 1.0e-2
          warmup_steps: 1
          lora: {"{rank: 4, alpha: 8}" if lora else "null"}
        data:
          corpus:
            init_args:
              size: 1
        """)
    )
    cli = main(
        ["fit", "--config", str(REPO / "recipes/configs/sft/demo.yaml"), "--config", str(override)]
    )
    assert cli.trainer.global_step == 1
    assert (
        Path(cli.datamodule.tokenizer.path) == initial_folder / "qwen.tiktoken"
    )  # connected with the folder's
    printed = capsys.readouterr().out
    assert (
        "### before SFT" in printed
        and "### after SFT" in printed
        and "| test-speech-0 |" in printed
    )
    # 4 held-out first questions scored per family (the round-robin order gives one of each of the
    # first four)
    table = printed.split("#### after SFT: answer accuracy")[1]
    assert "| all | 4 |" in table and all(
        f"| {kind} | 1 |" in table for kind in ("speech", "note", "scene", "count")
    )
    initial = load_model(initial_folder)[0].state_dict()
    trained = {k.replace(".base_layer.", "."): v for k, v in cli.model.model.state_dict().items()}
    changed = {
        k for k, v in trained.items() if ".lora_" not in k and not torch.equal(v, initial[k])
    }
    if lora:
        assert not changed and any(v.abs().sum() > 0 for k, v in trained.items() if ".lora_B." in k)
    else:
        assert {
            "lm_head.weight",
            "transformer.wte.weight",
            "transformer.h.1.mlp.w2.weight",
        } <= changed
        assert not any(k.startswith("transformer.audio.") for k in changed)


def test_the_module_s_tokenizer_is_the_init_from_folder_s_else_the_preset_s(initial_folder):
    assert (
        Path(QwenAudioModule(preset="tiny", init_from=str(initial_folder)).tokenizer.path)
        == initial_folder / "qwen.tiktoken"
    )
    assert Path(QwenAudioModule(preset="tiny").tokenizer.path) == DEMO_RANKS_FILE


def test_a_data_module_used_before_connect_says_so(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD])
    with pytest.raises(
        RuntimeError,
        match=r"^ChatDataModule has no tokenizer yet: call connect\(tokenizer, n_mels\)",
    ):
        ChatDataModule(train=[str(path)]).setup("fit")


PRETRAINING_ONLY = sorted(
    set(inspect.signature(AudioTextDataModule).parameters)
    - set(inspect.signature(ChatDataModule).parameters)
)


@pytest.mark.parametrize("option", PRETRAINING_ONLY)
def test_options_of_pretraining_that_sft_does_not_use_are_refused(option):
    assert {"max_seconds", "weights", "streaming", "augment", "cache", "on_error"} <= set(
        PRETRAINING_ONLY
    )
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{option}'"):
        ChatDataModule(**{option: None})


def test_the_sft_recipe_refuses_a_pretraining_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(REPO / "recipes/configs/sft/demo.yaml"),
                "--data.max_seconds",
                "8",
                "--print_config",
            ]
        )
    assert exit_info.value.code not in (0, None)
    assert "unrecognized arguments: --data.max_seconds 8" in capsys.readouterr().err


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses, self.with_audio = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.with_audio.append(batch["audio_mel"] is not None)


def test_sft_trains_on_a_mix_with_text_only_batches(tmp_path, clip):
    """One conversation a batch (max_tokens = max_length), so audio and pure-text batches alternate.

    SpecAugment is on.
    """
    audio = [
        {"messages": [user({"audio": clip.name}, {"text": f"q{i}"}), assistant("a")]}
        for i in range(3)
    ]
    text = [{"messages": [user(f"t{i}"), assistant("b")]} for i in range(3)]
    path = write_jsonl(tmp_path / "chat.jsonl", audio + text)
    data = ChatDataModule(train=[str(path)], text_ratio=0.5, max_length=64, max_tokens=64, seed=1)
    torch.manual_seed(0)
    module = QwenAudioModule(preset="tiny", train="decoder", spec_augment=True, warmup_steps=1)
    data.connect(module.tokenizer, module.config.encoder.n_mels)
    module.configure_model()
    initial = QwenAudio(module.config)
    initial.load_state_dict(module.model.state_dict())
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=data)
    assert (
        len(recorder.losses) == 6 and 0 < sum(recorder.with_audio) < 6
    )  # both kinds of batch were trained on
    replay = ChatDataModule(train=[str(path)], text_ratio=0.5, max_length=64, max_tokens=64, seed=1)
    replay.connect(module.tokenizer, module.config.encoder.n_mels)
    replay.setup("fit")
    first = next(iter(replay.train_dataloader()))  # epoch 0's first batch, pure text with this seed
    assert first["audio_mel"] is None and not recorder.with_audio[0]
    # the first step's loss, independently: the untrained model's own loss on that batch
    expected = initial(
        first["input_ids"], attention_mask=first["attention_mask"], labels=first["labels"]
    ).loss
    assert recorder.losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_an_empty_conversation_file_and_a_too_short_clip_are_named(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ManifestError, match=f"^{empty}: no conversations: the file is empty$"):
        read_conversations(empty)
    soundfile.write(tmp_path / "short.wav", np.zeros(320, np.float32), 16000)  # 20 ms
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [user({"audio": "short.wav"}), assistant("x")]}]
    )
    message = rf"^{path}:1: messages\[0\].content\[0\].audio: .*short.wav lasts 0.0200 s"
    with pytest.raises(ManifestError, match=message):
        read_conversations(path)


def test_a_text_only_batch_runs_the_encoder_with_zero_weight(tmp_path):
    """Under FSDP every rank must run the encoder each step.

    A text-only batch runs it too, changing nothing.
    """
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [user(f"t{i}"), assistant("b c")]} for i in range(2)]
    )
    data = ChatDataModule(train=[str(path)], max_length=64, max_tokens=128)
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["audio_mel"] is None
    torch.manual_seed(0)
    module = QwenAudioModule(preset="tiny", train="all")
    module.configure_model()
    runs = []
    module.model.encoder.register_forward_hook(lambda *args: runs.append(1))
    # before: the model alone, which skips the encoder when there is no audio
    before = module.model(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_at=label_positions(batch["labels"]),
    ).logits
    assert runs == []
    logits = module(batch)
    assert runs == [1] and logits.shape == before.shape
    losses, _, counted = token_losses(logits, batch["labels"])
    loss = losses.sum() / counted.sum()
    expected, _, _ = token_losses(before, batch["labels"])
    assert loss.item() == pytest.approx((expected.sum() / counted.sum()).item(), rel=1e-6)
    loss.backward()
    encoder = dict(module.model.encoder.named_parameters())
    assert encoder and all(p.grad is not None and not p.grad.any() for p in encoder.values())
    assert module.model.lm_head.weight.grad.any()


@pytest.mark.slow
def test_fsdp_ranks_with_and_without_audio_in_the_same_step_stay_in_step(tmp_path):
    """FSDP2 on 2 CPU processes, one conversation a batch: in steps 1 and 3 one rank has audio and
    the other not. Without the blank clip the ranks' collectives differ and gloo aborts the run."""
    rng = np.random.default_rng(0)
    for i in range(4):
        soundfile.write(tmp_path / f"c{i}.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 16000)
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [user({"audio": f"c{i}.wav"}, {"text": f"q{i}"}), assistant("a b")]}
            for i in range(4)
        ]
        + [{"messages": [user(f"t{i}"), assistant("c d")]} for i in range(4)],
    )
    data = ChatDataModule(train=[str(path)], max_length=64, max_tokens=64, seed=3)
    data.connect(QwenAudioTokenizer.demo(), n_mels=80)
    data.setup("fit")
    plans = [
        [
            bool(batch[0] < 4)
            for batch in DurationBucketSampler(
                data.lengths["train"], 64, seed=3, rank=rank, world_size=2
            )
        ]
        for rank in (0, 1)
    ]
    # some step has audio on one rank only
    assert any(a != b for a, b in zip(*plans, strict=True)), plans
    strategy = (
        '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", '
        '"init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipes.sft",
            "fit",
            "--model.preset",
            "tiny",
            "--model.train",
            "all",
            "--data.train",
            f"[{path}]",
            "--data.max_length",
            "64",
            "--data.max_tokens",
            "64",
            "--data.seed",
            "3",
            "--trainer.max_steps",
            "4",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            strategy,
            "--trainer.use_distributed_sampler",
            "false",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.limit_val_batches",
            "0",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`max_steps=4` reached" in result.stderr


def test_an_init_from_folder_of_another_architecture_is_refused_naming_the_field(
    initial_folder, tmp_path
):
    # rope_theta changes no tensor shape, so only the config check can see it
    folder = tmp_path / "other"
    shutil.copytree(initial_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rotary_emb_base": 500000}))
    message = r"does not describe the preset 'tiny': decoder.rotary_emb_base: folder 500000, preset 10000\.0"
    with pytest.raises(CheckpointError, match=message):
        QwenAudioModule(preset="tiny", init_from=str(folder))


def test_chat_transcript_majority_is_the_training_splits_most_common_answer(monkeypatch, capsys):
    """The SFT demo's answer table on a hand-worked case: canned replies stand in for the model, and
    the majority answer of each family comes from the training conversations, not the test ones."""

    def conversation(conversation_id: str, answer: str) -> Conversation:
        return Conversation(conversation_id, (Message("user", "q"), Message("assistant", answer)))

    train = [conversation(f"train-scene-{i}", a) for i, a in enumerate(["Rain.", "rain", "wind"])]
    train += [conversation(f"train-count-{i}", a) for i, a in enumerate(["two", "two", "three"])]
    test = [conversation(f"test-scene-{i}", a) for i, a in enumerate(["wind", "wind", "rain"])]
    test += [conversation(f"test-count-{i}", a) for i, a in enumerate(["three", "three"])]
    replies = iter(["wind", "rain", "rain", "three", "two"])
    monkeypatch.setattr(callbacks, "chat", lambda *args, **kwargs: (next(replies), []))
    tokenizer = SimpleNamespace(im_end=1, im_start=2, eod=3)
    datamodule = SimpleNamespace(
        setup=lambda stage: None,
        tokenizer=tokenizer,
        conversations={"train": (train, []), "test": (test, [])},
        question_family=DemoChat().question_family,
    )
    trainer = SimpleNamespace(datamodule=datamodule)
    module = SimpleNamespace(model=torch.nn.Linear(1, 1))
    callbacks.ChatTranscript(per_group=0)._report(trainer, module, "SFT")
    out = capsys.readouterr().out
    # right: scene 2 of 3 (wind, rain), count 1 of 2 (three). Majority from training: scene "rain"
    # (1 of the 3 test answers), count "two" (0 of 2); the test split's own would be "wind", "three"
    assert "| scene | 3 | 0.667 | 0.333 |" in out and "| count | 2 | 0.500 | 0.000 |" in out
    assert "| all | 5 | 0.600 | 0.200 |" in out
