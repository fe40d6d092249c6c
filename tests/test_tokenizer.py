"""QwenAudioTokenizer against the spec's ids, the demo file, and audio expansion.

The spec's ids are those of the released qwen.tiktoken.
"""

from __future__ import annotations

import importlib.util
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qwen_audio.tokenizer as tokenizer_module
from qwen_audio.audio import load_audio
from qwen_audio.clips import check_audio_features
from qwen_audio.prompts import encode_text
from qwen_audio.tokenizer import DEMO_RANKS_FILE, QwenAudioTokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_demo_tokenizer.py"


def write_wav(path: Path, num_samples: int) -> str:
    soundfile.write(path, np.linspace(-0.5, 0.5, num_samples, dtype=np.float32), 16000)
    return str(path)


# Every row of the spec §4 table: (first token, first id, last token, last id).
SPEC_RANGES = [
    ("<|endoftext|>", 151643, "<|endoftext|>", 151643),
    ("<|im_start|>", 151644, "<|im_end|>", 151645),
    ("<|extra_0|>", 151646, "<|extra_204|>", 151850),
    ("[[[AUDIO:modality]]]", 151851, "[[[AUDIO:modality]]]", 151851),
    ("<|startoftranscript|>", 151852, "<|startofanalysis|>", 151853),
    ("<|translate|>", 151854, "<|keyword|>", 151857),
    ("<|unknown|>", 151858, "<|unknown|>", 151858),
    ("<|en|>", 151859, "<|it|>", 151866),
    ("<|zh_tr|>", 151867, "<|zh_tr|>", 151867),
    ("<|notimestamps|>", 151868, "<|timestamps|>", 151870),
    ("<|0.00|>", 151871, "<|30.00|>", 154871),
    ("<|caption_audiocaps|>", 154872, "<|wo_itn|>", 154877),
    ("<|startofentityvalue|>", 154878, "<|named_entity_recognition|>", 154882),
    ("<|audio_grounding|>", 154883, "<|delim|>", 154886),
    ("<|emotion_recognition|>", 154887, "<|note_analysis|>", 154889),
    ("<|pitch|>", 154890, "<|midi_pitch_127|>", 155018),
    ("<|velocity|>", 155019, "<|midi_velocity_127|>", 155147),
    ("<|sonic|>", 155148, "<|song_meta|>", 155151),
    ("<|question|>", 155152, "<|event|>", 155156),
    ("<|vocal_classification|>", 155157, "<|speech_edit|>", 155162),
    ("<audio>", 155163, "</audio>", 155164),
]


@pytest.mark.parametrize(("first", "first_id", "last", "last_id"), SPEC_RANGES)
def test_released_special_ids_match_spec_table(released, first, first_id, last, last_id):
    assert released.special_id(first) == first_id
    assert released.special_id(last) == last_id
    assert released.encode(first + last, allowed_special="all") == [first_id, last_id]


def test_released_vocabulary_sizes_and_named_ids(released):
    assert (released.n_regular, released.n_vocab) == (151643, 155165)
    assert (released.eod, released.im_start, released.im_end) == (151643, 151644, 151645)
    assert (released.audio_pad, released.audio_start, released.audio_end) == (
        151851,
        155163,
        155164,
    )
    assert (released.first_timestamp, released.last_timestamp) == (151871, 154871)
    assert released.special_id("<|sil|>") == 151869
    assert released.special_id("<|midi_pitch_60|>") == 154891 + 60


def test_released_spec_example_and_regular_ids(released):
    text = "<audio>x.flac</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"
    assert released.encode(text, allowed_special="all") == [
        155163,
        87,
        8103,
        580,
        155164,
        151852,
        151859,
        151855,
        151859,
        151868,
        154877,
    ]
    assert [released.encode(word) for word in ("\n", "user", "system", "assistant")] == [
        [198],
        [872],
        [8948],
        [77091],
    ]
    # README pitfall (spec §4): the misspelt tag is plain text even when every special token is
    # allowed.
    with pytest.warns(
        UserWarning, match=r"<\|startoftranscription\|> in the prompt is not a special token"
    ):
        assert released.encode("<|startoftranscription|>", "all") == [
            27,
            91,
            2468,
            1055,
            1458,
            1453,
            91,
            29,
        ]


def test_released_ids_agree_with_plain_tiktoken(released):
    """Independent oracle: a tiktoken Encoding built here.

    It is built from the same file and the spec's numbering.
    """
    import tiktoken

    specials = {
        token: 151643 + index for index, token in enumerate(tokenizer_module.SPECIAL_TOKENS)
    }
    reference = tiktoken.Encoding(
        "reference",
        pat_str=tokenizer_module.PAT_STR,
        mergeable_ranks=released.encoding._mergeable_ranks,
        special_tokens=specials,
    )
    text = "Hello 世界! <|en|> it's 12.5 s\n\n  done <audio>a.wav</audio>"
    assert released.encode(text, "all") == reference.encode(text, allowed_special="all")
    assert len(specials) == 3522


def test_special_text_stays_text_unless_allowed(released):
    ids = released.encode("<|en|> hi <|endoftext|>")
    assert released.eod not in ids and released.special_id("<|en|>") not in ids
    assert released.decode(ids) == "<|en|> hi <|endoftext|>"
    assert released.encode("<|en|>", allowed_special={"<|en|>"}) == [151859]


def test_timestamp_ids(released, demo):
    assert released.timestamp_id(0.54) == 151871 + 54
    assert released.timestamp_id(30.0) == 154871
    assert released.timestamp_id(1.004) == 151871 + 100  # nearest 0.01 s
    assert released.timestamp_seconds(151871 + 201) == 2.01
    assert released.timestamp_seconds(198) is None
    assert (
        demo.timestamp_id(0.0) == 4096 + 228
    )  # 3 + 205 extras + 20 audio/task/language/timestamp-mode tokens
    for bad in (-0.01, 30.01):
        with pytest.raises(ValueError, match="outside the released range"):
            released.timestamp_id(bad)


def test_nfc_normalisation(released):
    assert released.encode("e\u0301") == released.encode("\u00e9")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40))
def test_round_trip_any_text(released, demo, text):
    expected = unicodedata.normalize("NFC", text)
    for tokenizer in (released, demo):
        assert tokenizer.decode(tokenizer.encode(text)) == expected
        assert tokenizer.decode(tokenizer.encode(text, allowed_special="all")) == expected


def test_demo_vocabulary(demo):
    assert (demo.n_regular, demo.n_vocab) == (4096, 7618)
    assert (demo.eod, demo.audio_pad, demo.audio_start, demo.audio_end) == (
        4096,
        4096 + 208,
        7616,
        7617,
    )
    assert DEMO_RANKS_FILE.stat().st_size < 1 << 20


def test_demo_file_is_a_real_bpe(demo):
    """Ranks 0..255 are the single bytes.

    Every later token is the concatenation of two lower-ranked tokens.
    """
    ranks = demo.encoding._mergeable_ranks
    assert {rank: token for token, rank in ranks.items() if rank < 256} == {
        b: bytes([b]) for b in range(256)
    }
    for token, rank in ranks.items():
        if rank >= 256:
            assert any(
                ranks.get(token[:cut], rank) < rank and ranks.get(token[cut:], rank) < rank
                for cut in range(1, len(token))
            ), token
    sentence = "the children sing a happy song. 孩子们在唱歌。"
    assert len(demo.encode(sentence)) < len(sentence.encode()) // 3


def test_bpe_trainer_hand_worked():
    spec = importlib.util.spec_from_file_location("build_demo_tokenizer", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # pieces "ab", " ab", " ab", "\n": (a, b) occurs 3 times -> "ab" = 256; then (" ", "ab") twice
    # -> " ab" = 257.
    ranks = script.train_bpe("ab ab ab\n", 258)
    assert {token: rank for token, rank in ranks.items() if rank >= 256} == {
        b"ab": 256,
        b" ab": 257,
    }
    with pytest.raises(ValueError, match="supports only"):
        script.train_bpe("ab\n", 1000)


def test_from_file_small_ranks_file_and_errors(tmp_path):
    path = tmp_path / "tiny.tiktoken"
    import base64

    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    tiny = QwenAudioTokenizer.from_file(path)
    assert (tiny.n_vocab, tiny.eod, tiny.audio_end) == (256 + 3522, 256, 256 + 3521)
    assert tiny.decode(tiny.encode("héllo")) == "héllo"
    path.write_text("YQ== 0\nnot-base64! 1\n")
    with pytest.raises(ValueError, match=r"tiny.tiktoken:2"):
        QwenAudioTokenizer.from_file(path)
    path.write_text("YQ== 0\nYg== 5\n")
    with pytest.raises(ValueError, match="ranks of tiny.tiktoken must be exactly 0 ... 1"):
        QwenAudioTokenizer.from_file(path)


def test_released_file_missing_or_altered(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "RELEASED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=r"pip install dashscope==2\.0\.2"):
        QwenAudioTokenizer.released()

    def no_package(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(tokenizer_module.importlib.resources, "files", no_package)
    with pytest.raises(FileNotFoundError, match=r"pip install dashscope==2\.0\.2"):
        QwenAudioTokenizer.released()


def test_audio_expansion_hand_worked(released):
    # 1 s -> 25 placeholders (spec §1 worked example); 0.5 s -> mel 50 -> conv 25 -> pool 12.
    waves = {"x.flac": torch.zeros(16000), "y.wav": torch.zeros(8000)}
    encoded = encode_text(
        released, "<audio>x.flac</audio>hi<audio>y.wav</audio>", allowed_special=set(), load=waves
    )
    hi = released.encode("hi")
    assert encoded.ids == [155163, *[151851] * 25, 155164, *hi, 155163, *[151851] * 12, 155164]
    first, second = encoded.clips
    assert (first.source, first.num_samples, first.start, first.stop) == ("x.flac", 16000, 0, 27)
    assert first.audio_tokens == 25
    assert (second.start, second.stop, second.audio_tokens) == (27 + len(hi), 27 + len(hi) + 14, 12)
    assert [w.shape[0] for w in encoded.waveforms] == [16000, 8000]
    restored = released.decode(encoded.ids, audio_sources=["x.flac", "y.wav"])
    assert restored == "<audio>x.flac</audio>hi<audio>y.wav</audio>"


def test_audio_files_decoded_once(released, tmp_path):
    path = write_wav(tmp_path / "a.wav", 4000)
    calls = []

    def load(source):
        calls.append(source)
        return load_audio(source)

    encoded = encode_text(
        released,
        f"<audio>{path}</audio> and <audio>{path}</audio>",
        allowed_special=set(),
        load=load,
    )
    assert calls == [path]
    assert [span.audio_tokens for span in encoded.clips] == [6, 6]  # 4000 // 160 = 25 -> 13 -> 6
    assert encoded.waveforms[0] is encoded.waveforms[1]
    default = encode_text(released, f"<audio>{path}</audio>", allowed_special=set())  # load_audio
    assert default.ids == encoded.ids[: encoded.clips[0].stop]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<audio>a.wav", "never closed"),
        ("a.wav</audio>", "no opening"),
    ],
)
def test_unmatched_audio_tags_raise(released, text, message):
    with pytest.raises(ValueError, match=message):
        encode_text(released, text, allowed_special=set(), load={"a.wav": torch.zeros(10)})


def test_check_audio_features(released):
    encoded = encode_text(
        released,
        "<audio>x.flac</audio>",
        allowed_special=set(),
        load={"x.flac": torch.zeros(16000)},
    )
    check_audio_features(encoded.clips, [25])
    with pytest.raises(ValueError, match=r"audio 0 \(x\.flac\).*25 placeholder.*24 frames"):
        check_audio_features(encoded.clips, [24])
    with pytest.raises(ValueError, match="1 audios but features were given for 2"):
        check_audio_features(encoded.clips, [25, 25])


def test_decode_rejects_unknown_ids(demo):
    with pytest.raises(ValueError, match=r"token id 7618 is outside the vocabulary \[0, 7618\)"):
        demo.decode([1, 7618, 9000])  # the first id out of range is named
    with pytest.raises(ValueError, match="token id -1 "):
        demo.decode([5, -1])


def test_unknown_tag_in_a_prompt_warns_and_stays_text(demo):
    """The release encodes ``<|xx|>`` as the plain text it is; say that it did.

    The oracle is tiktoken itself.
    """
    with pytest.warns(UserWarning) as record:
        ids = demo.encode("<|startoftranscript|><|xx|><|30.01|>", allowed_special="all")
    assert [str(w.message).split()[0] for w in record] == ["<|30.01|>", "<|xx|>"]
    assert "in the prompt is not a special token" in str(record[0].message)
    plain = demo.encoding.encode("<|xx|><|30.01|>", disallowed_special=())
    assert ids == [demo.special_id("<|startoftranscript|>"), *plain]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        demo.encode("<|en|> text <|xx|>")  # no tags read from this text: nothing to warn about
        demo.encode("<|en|><|0.50|>", allowed_special="all")


def test_no_ranks_is_named():
    with pytest.raises(ValueError, match="empty.tiktoken holds no ranks"):
        QwenAudioTokenizer({}, name="empty.tiktoken")
