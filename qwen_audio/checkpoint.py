"""Weights in and out: the one loader, the released folder layout, and the stage-1 start.

Stage 1 starts from Whisper + Qwen-7B.

:func:`load_model` is the only way from a folder or a preset to ``(model, tokenizer)``. The model
itself never reads files, as in whisper and litgpt. This module also decides which family a folder
holds, from its ``config.json`` ``model_type`` (:func:`read_config`, :func:`load_tokenizer`). The
config and tokenizer modules thus know only Qwen-Audio.

Released layout (Qwen/Qwen-Audio, Qwen/Qwen-Audio-Chat): ``config.json``, ``qwen.tiktoken``, and
``model.safetensors`` or shards ``model-0000i-of-0000n.safetensors`` listed in
``model.safetensors.index.json``. ``pytorch_model*.bin`` shards are pickles. They are read only when
the caller passes ``allow_pickle=True``. Every load is strict: missing, unexpected or mis-shaped
keys raise :class:`CheckpointError` listing them. Qwen2-Audio folders (``config.json`` of
``Qwen2AudioForConditionalGeneration``, ``tokenizer.json``) load and save through the same
functions. :mod:`qwen_audio.qwen2_audio.weights` translates their names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.constants import SAFETENSORS_INDEX_FILE
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qwen_audio.config import QwenAudioConfig, read_config_file
from qwen_audio.errors import CheckpointError
from qwen_audio.model import QwenAudio
from qwen_audio.qwen2_audio.folder import check_preprocessor_config, write_side_files
from qwen_audio.qwen2_audio.hf_config import config_from_hf, config_to_hf
from qwen_audio.qwen2_audio.tokenizer import TOKENIZER_JSON, Qwen2AudioTokenizer
from qwen_audio.qwen2_audio.weights import to_hf, to_ours
from qwen_audio.tokenizer import AUDIO_START, SPECIAL_TOKENS, QwenAudioTokenizer, Tokenizer

SAFE_INDEX = SAFETENSORS_INDEX_FILE
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILE = "qwen.tiktoken"
ENCODER_PREFIX = "transformer.audio."


def load_model(
    checkpoint: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> tuple[QwenAudio, Tokenizer]:
    """``(model, tokenizer)`` in eval mode from a ``checkpoint`` folder or a ``preset`` name.

    Pass exactly one of the two. A folder may hold either family's layout. A preset's weights are
    drawn with seed 0 and come with the preset's tokenizer, for smoke tests. A folder's tokenizer
    file must be there and fit its ``config.json`` (:func:`read_tokenizer`). The weights are in
    ``dtype`` if given, else in fp32 on CPU and in the checkpoint's dtype elsewhere.
    """
    if (checkpoint is None) == (preset is None):
        raise ValueError(
            "load_model takes a checkpoint folder or a preset name, exactly one of them"
        )
    if preset is not None:
        config = QwenAudioConfig.from_name(preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = QwenAudio(config)
        return model.to(device=device, dtype=dtype).eval(), load_tokenizer(preset=preset)
    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"checkpoint folder not found: {os.fspath(checkpoint)}")
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32
    config = read_config(checkpoint)
    model = load_pretrained(
        checkpoint, dtype=dtype, device=device, allow_pickle=allow_pickle, config=config
    )
    return model.eval(), read_tokenizer(checkpoint, config)


def load_tokenizer(
    checkpoint: str | os.PathLike | None = None, *, preset: str | None = None
) -> Tokenizer:
    """The tokenizer :func:`load_model` would give, without building the model."""
    if (checkpoint is None) == (preset is None):
        raise ValueError(
            "load_tokenizer takes a checkpoint folder or a preset name, exactly one of them"
        )
    if checkpoint is not None:
        return read_tokenizer(checkpoint, read_config(checkpoint))
    name = QwenAudioConfig.from_name(preset).tokenizer
    if name == "qwen2-demo":
        return Qwen2AudioTokenizer.demo()
    if name == "checkpoint":
        raise CheckpointError(
            f"preset {preset!r} has no tokenizer of its own: it comes with a checkpoint folder "
            f"({TOKENIZER_JSON}); pass the folder instead"
        )
    return QwenAudioTokenizer.load(name)


def read_config(source: str | os.PathLike | dict, name: str | None = None) -> QwenAudioConfig:
    """The config of either family's ``config.json``.

    ``source`` is a dict, the file, or the folder holding it.
    """
    data, where = read_config_file(source)
    if data.get("model_type") == "qwen2_audio":
        return config_from_hf(data, where, name)
    return QwenAudioConfig.from_hf_config(source, name)


def check_architecture(folder: str | os.PathLike, config: QwenAudioConfig) -> None:
    """Check that ``folder``'s ``config.json`` describes ``config``'s architecture.

    Raise :class:`CheckpointError` otherwise. A value that changes no tensor shape (``rope_theta``,
    ``rms_norm_eps``, ...) would otherwise load silently into a model that computes something else.
    """
    found = read_config(folder)
    fields = {
        "family": (found.family, config.family),
        "audio_start_id": (found.audio_start_id, config.audio_start_id),
    }
    for part in ("encoder", "decoder"):
        ours, theirs = (
            dataclasses.asdict(getattr(config, part)),
            dataclasses.asdict(getattr(found, part)),
        )
        fields.update({f"{part}.{key}": (theirs[key], ours[key]) for key in ours})
    differ = [f"{key}: folder {a!r}, preset {b!r}" for key, (a, b) in fields.items() if a != b]
    if differ:
        raise CheckpointError(
            f"{os.path.join(os.fspath(folder), 'config.json')} does not describe the preset "
            f"{config.name!r}: " + "; ".join(differ)
        )


def hf_config(config: QwenAudioConfig) -> dict:
    """The ``config.json`` of ``config``'s family (loads back with :func:`read_config`)."""
    return config_to_hf(config) if config.family == "qwen2-audio" else config.to_hf_config()


def _read_file(path: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"cannot read {path} (truncated or corrupt safetensors file?): {err}"
            ) from err
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle; pass allow_pickle=True (--allow-pickle) to read it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad pickle
        raise CheckpointError(f"cannot read {path}: {err}") from err


def read_state_dict(
    folder: str | os.PathLike, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face-layout folder (single file or index + shards)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    candidates = [(SAFE_INDEX, "model.safetensors")] + (
        [(BIN_INDEX, "pytorch_model.bin")] if allow_pickle else []
    )
    for index_name, single_name in candidates:
        index_path = os.path.join(folder, index_name)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(
                    f"{index_path} is not a valid index (needs a 'weight_map'): {err}"
                ) from err
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                tensors = _read_file(os.path.join(folder, shard), allow_pickle)
                listed = {k for k, v in weight_map.items() if v == shard}
                if set(tensors) != listed:
                    raise CheckpointError(
                        f"{os.path.join(folder, shard)} holds keys that differ from {index_path}: "
                        f"missing {sorted(listed - set(tensors))}, extra {sorted(set(tensors) - listed)}"
                    )
                state.update(tensors)
            return state
        if os.path.isfile(os.path.join(folder, single_name)):
            return _read_file(os.path.join(folder, single_name), allow_pickle)
    hint = "" if allow_pickle else " (.bin shards need allow_pickle=True)"
    raise CheckpointError(f"{folder} holds neither {SAFE_INDEX} nor model.safetensors{hint}")


def check_state_dict(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k]
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """Every state-dict key of ``model`` with its (global, also under FSDP) shape."""
    return {k: v.shape for k, v in model.state_dict().items()}


def load_pretrained(
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    allow_pickle: bool = False,
    config: QwenAudioConfig | None = None,
) -> QwenAudio:
    """Build the model from ``folder/config.json`` on the meta device.

    The checkpoint's tensors are then assigned to it. The tensors keep the checkpoint's dtype (bf16
    for the release) unless ``dtype`` is given.
    """
    config = config or read_config(folder)
    with torch.device("meta"):
        model = QwenAudio(config)
    state = read_model_state_dict(folder, config, allow_pickle)
    check_state_dict(expected_shapes(model), state, os.fspath(folder))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def read_model_state_dict(
    folder: str | os.PathLike, config: QwenAudioConfig, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """The folder's tensors under our state-dict keys.

    A Qwen2-Audio folder's names go through its weight map.
    """
    state = read_state_dict(folder, allow_pickle)
    if config.family == "qwen2-audio":
        check_preprocessor_config(folder, config)
        state = to_ours(state, folder)
    return state


def read_tokenizer(folder: str | os.PathLike, config: QwenAudioConfig) -> Tokenizer:
    """The folder's tokenizer (Qwen2-Audio: its ``tokenizer.json``).

    A ``qwen.tiktoken`` is refused unless it is complete and fits ``config`` (its ``config.json``).
    The special tokens follow the ranks. A file with one rank too few or too many thus shifts every
    special id. The prompts' ``<audio>`` would then no longer be the id the model splices audio at.
    ``<audio>`` landing on ``audio_start_id`` pins the number of ranks, and with it the vocabulary
    size. ``</audio>``, the last id, lies inside ``vocab_size`` by the config's own check.
    """
    if config.family == "qwen2-audio":
        path = os.path.join(os.fspath(folder), TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{path} is missing: a Qwen2-Audio folder carries its tokenizer.json"
            )
        return Qwen2AudioTokenizer.from_file(path)
    path = os.path.join(os.fspath(folder), TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path} is missing: a checkpoint folder carries its tokenizer (the release's "
            f"{TOKENIZER_FILE}, or the file the model was trained with)"
        )
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty")
    try:
        tokenizer = QwenAudioTokenizer.from_file(path)
    except ValueError as err:
        raise CheckpointError(f"{path} is not a complete ranks file (truncated?): {err}") from err
    if tokenizer.audio_start != config.audio_start_id:
        needed = config.audio_start_id - SPECIAL_TOKENS.index(AUDIO_START)
        raise CheckpointError(
            f"{path} holds {tokenizer.n_regular} ranks, so <audio> would get id {tokenizer.audio_start}; the "
            f"config's audio_start_id {config.audio_start_id} (vocab_size {config.decoder.vocab_size}) needs "
            f"{needed} ranks: the file is truncated or belongs to another model"
        )
    return tokenizer


def check_writable(folder: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless :func:`save_pretrained` can write ``folder``.

    A job that exports at its end runs this at its start. A bad path is then found before hours of
    training, not after.
    """
    folder = os.path.abspath(folder)
    try:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder} is a file")
        os.makedirs(folder, exist_ok=True)
        for where in (
            folder,
            os.path.dirname(folder),
        ):  # the staging folder is made beside ``folder``
            with tempfile.TemporaryDirectory(prefix=".write-check-", dir=where):
                pass
    except OSError as err:
        raise CheckpointError(f"cannot export to {folder}: {err}") from err


def save_pretrained(
    model: QwenAudio,
    folder: str | os.PathLike,
    *,
    tokenizer_file: str | os.PathLike | None = None,
    max_shard_size: int | str = "5GB",
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``model`` in the released layout.

    The layout is safetensors shards (+ index when more than one) and ``config.json``.
    ``state_dict`` gives the full weights when ``model`` itself is sharded (FSDP gathers them
    first). The files are written into a staging folder beside ``folder``. Then each is renamed over
    its namesake in ``folder`` (:func:`_move_into`). A crash while writing thus leaves the previous
    export intact. Files that are not part of the layout (a user's notes, a README) stay. Folder and
    files get the permissions the umask gives.
    """
    folder = os.path.abspath(folder)
    check_writable(folder)
    state = {
        k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()
    }
    dtype = state["lm_head.weight"].dtype
    if model.config.family == "qwen2-audio":
        state = to_hf(state)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(folder)}.staging-", dir=os.path.dirname(folder)
    )
    try:
        split = split_torch_state_dict_into_shards(
            state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
        )
        for filename, keys in split.filename_to_tensors.items():
            save_file(
                {k: state[k] for k in keys},
                os.path.join(staging, filename),
                metadata={"format": "pt"},
            )
        if split.is_sharded:
            with open(os.path.join(staging, SAFE_INDEX), "w", encoding="utf-8") as f:
                json.dump(
                    {"metadata": split.metadata, "weight_map": split.tensor_to_filename},
                    f,
                    indent=2,
                )
        written = {**hf_config(model.config), "torch_dtype": str(dtype).removeprefix("torch.")}
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(written, f, indent=2)
        if model.config.family == "qwen2-audio":
            write_side_files(staging, model.config, tokenizer_file)
        elif tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, os.path.join(staging, TOKENIZER_FILE))
        _move_into(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|" + re.escape(SAFE_INDEX))


def _move_into(staging: str, folder: str) -> None:
    """Rename every file of ``staging`` into ``folder``, each an atomic replace.

    Weights go first and ``config.json`` last. Then the safetensors weights of an earlier export
    that the new one does not have are deleted. A stale index or shard would be read in place of the
    new weights. Nothing else in ``folder`` is touched.
    """
    umask = os.umask(0)
    os.umask(umask)
    written = sorted(
        os.listdir(staging), key=lambda name: (name == "config.json", name == SAFE_INDEX, name)
    )
    for name in written:
        os.chmod(os.path.join(staging, name), 0o666 & ~umask)  # safetensors creates its files 0600
        os.replace(os.path.join(staging, name), os.path.join(folder, name))
    for name in set(os.listdir(folder)) - set(written):
        if _WEIGHT_FILE.fullmatch(name):
            os.remove(os.path.join(folder, name))


def read_whisper_encoder(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder tensors of an openai-whisper ``.pt`` checkpoint, under our names.

    They are renamed ``encoder.X`` -> ``transformer.audio.X``. The file is read with
    ``torch.load(weights_only=True)``. It is a dict of tensors and plain values, so no code runs.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Whisper checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        weights = checkpoint["model_state_dict"]
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise CheckpointError(
            f"cannot read Whisper checkpoint {path} (expects openai-whisper's "
            f"{{'dims', 'model_state_dict'}} file): {err}"
        ) from err
    return {
        ENCODER_PREFIX + k.removeprefix("encoder."): v
        for k, v in weights.items()
        if k.startswith("encoder.")
    }


def init_stage1(
    whisper_path: str | os.PathLike,
    qwen_folder: str | os.PathLike,
    config: QwenAudioConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    allow_pickle: bool = False,
    seed: int = 0,
) -> QwenAudio:
    """Stage-1 starting point: Whisper-large-v2's encoder + Qwen-7B's decoder.

    ``proj`` and audio BOS/EOS are new. Qwen-7B has 151,936 embedding rows, the model 155,947
    (audio, task and timestamp tokens). The new rows of ``wte`` and ``lm_head`` are drawn from
    N(mean, diag(var)) of the existing rows (Hewitt, 2021). They thus start inside the distribution
    the frozen LLM knows. They also start distinct, so task tags can be told apart. ``proj.weight``
    and ``audio_bos_eos_token`` are drawn from N(0, 0.02) and ``proj.bias`` is zero, the release's
    initialisation. The model is built on the meta device, so only the checkpoints' tensors take
    memory.
    """
    with torch.device("meta"):
        model = QwenAudio(config)
    expected = expected_shapes(model)
    generator = torch.Generator().manual_seed(seed)
    fresh = {
        ENCODER_PREFIX + "proj.weight": 0.02
        * torch.randn(expected[ENCODER_PREFIX + "proj.weight"], generator=generator),
        ENCODER_PREFIX + "proj.bias": torch.zeros(expected[ENCODER_PREFIX + "proj.bias"]),
        ENCODER_PREFIX + "audio_bos_eos_token.weight": 0.02
        * torch.randn(expected[ENCODER_PREFIX + "audio_bos_eos_token.weight"], generator=generator),
    }
    encoder_state = read_whisper_encoder(whisper_path)
    check_state_dict(
        {k: s for k, s in expected.items() if k.startswith(ENCODER_PREFIX) and k not in fresh},
        encoder_state,
        os.fspath(whisper_path),
    )
    decoder_state = read_state_dict(qwen_folder, allow_pickle)
    vocab_keys = ("transformer.wte.weight", "lm_head.weight")
    decoder_expected = {k: s for k, s in expected.items() if not k.startswith(ENCODER_PREFIX)}
    for key in vocab_keys:  # fewer rows than the model is expected: they are grown below
        if key in decoder_state and decoder_state[key].shape[0] <= expected[key][0]:
            decoder_expected[key] = torch.Size((decoder_state[key].shape[0], *expected[key][1:]))
    check_state_dict(decoder_expected, decoder_state, os.fspath(qwen_folder))
    for key in vocab_keys:
        decoder_state[key] = _grow_rows(decoder_state[key], expected[key][0], generator)
    state = {k: v.to(dtype) for k, v in {**encoder_state, **decoder_state, **fresh}.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _grow_rows(weight: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    old = weight.float()
    mean, std = old.mean(0), old.std(0)
    new = mean + std * torch.randn(rows - old.shape[0], old.shape[1], generator=generator)
    return torch.cat([old, new])
