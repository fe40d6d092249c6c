"""The importers on small data built with the real libraries (``datasets`` and ``lhotse``, no hub):
what each row becomes is written out by hand here, bad rows are named by split and row (or file and
line), and the manifests they write read back through the manifest reader that training uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from qwen_audio.data.convert import hf, lhotse_cuts
from qwen_audio.data.convert.fields import Fields
from qwen_audio.data.manifest import ManifestError, read_manifest

datasets = pytest.importorskip("datasets")
lhotse = pytest.importorskip("lhotse")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """Three noise clips: a 0.5 s wav, a 0.8 s flac, a 1.0 s wav."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i, (seconds, ext) in enumerate(((0.5, "wav"), (0.8, "flac"), (1.0, "wav"))):
        path = str(folder / f"clip{i}.{ext}")
        soundfile.write(
            path,
            rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32),
            16000,
            subtype="PCM_16",
        )
        paths.append(path)
    return paths


def _table(clips, texts):
    words = [[{"word": "one", "start": 0.05, "end": 0.3}], [], []]
    audio = [
        {"bytes": open(clip, "rb").read(), "path": os.path.basename(clip)} for clip in clips
    ]  # as on the hub
    table = datasets.Dataset.from_dict(
        {"file": audio, "sentence": texts, "locale": ["en", "zh", "English"], "timings": words}
    )
    return table.cast_column("file", datasets.Audio())


def _lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_rows_become_manifest_lines_with_their_audio_bytes(tmp_path, clips, layout):
    table = _table(clips, ["one", "二", "three"])
    if layout == "save_to_disk":
        datasets.DatasetDict(train=table, test=table.select([2])).save_to_disk(tmp_path / "src")
    else:
        (tmp_path / "src").mkdir()
        table.to_parquet(tmp_path / "src" / "train-00000-of-00001.parquet")
        table.select([2]).to_parquet(tmp_path / "src" / "test-00000-of-00001.parquet")
    fields = Fields(
        audio="file",
        text="sentence",
        language="locale",
        words="timings",
        languages={"English": "en"},
    )
    manifests = hf.convert(tmp_path / "src", tmp_path / "out", fields)
    assert sorted(manifests) == ["test", "train"]
    train = _lines(manifests["train"])
    assert [
        (
            line["task"],
            line["text"],
            line["audio_language"],
            line["text_language"],
            line["duration"],
        )
        for line in train
    ] == [
        ("asr", "one", "en", "en", 0.5),
        ("srwt", "one", "en", "en", 0.5),
        ("asr", "二", "zh", "zh", 0.8),
        ("asr", "three", "en", "en", 1.0),
    ]
    assert train[1]["words"] == [{"word": "one", "start": 0.05, "end": 0.3}]
    assert [line["audio"] for line in train] == [
        "audio/train/00000000.wav",
        "audio/train/00000000.wav",
        "audio/train/00000001.flac",
        "audio/train/00000002.wav",
    ]
    for line, clip in zip(train[1:], clips):
        assert (tmp_path / "out" / line["audio"]).read_bytes() == open(clip, "rb").read()
    assert len(read_manifest(manifests["train"], check_audio=True)) == 4  # what training reads
    assert _lines(manifests["test"])[0]["audio"] == "audio/test/00000000.wav"


def test_a_bad_hf_row_is_named_by_split_and_row_and_can_be_skipped(tmp_path, clips):
    datasets.DatasetDict(train=_table(clips, ["one", None, "three"])).save_to_disk(tmp_path / "src")
    fields = Fields(audio="file", text="sentence", language="locale", languages={"English": "en"})
    with pytest.raises(
        ManifestError, match=r"src\[train\]:1: sentence: must be a string, got NoneType"
    ):
        hf.convert(tmp_path / "src", tmp_path / "out", fields)
    assert not (tmp_path / "out" / "train.jsonl").exists()
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 rows .*\(1 sentence\)"):
        manifests = hf.convert(tmp_path / "src", tmp_path / "out", fields, on_error="skip")
    assert [line["text"] for line in _lines(manifests["train"])] == ["one", "three"]
    datasets.DatasetDict(train=_table(clips, ["one", "二", "three"])).save_to_disk(
        tmp_path / "named"
    )
    with pytest.raises(
        ManifestError, match=r"named\[train\]:2: locale: unknown language 'English'"
    ):
        hf.convert(
            tmp_path / "named",
            tmp_path / "out2",
            Fields(audio="file", text="sentence", language="locale"),
            splits=["train"],
        )


def _cuts(clips, folder, bad_language=False):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    recordings = [Recording.from_file(clip, recording_id=f"r{i}") for i, clip in enumerate(clips)]
    words = {"word": [AlignmentItem("ONE", 0.3, 0.2), AlignmentItem("TWO", 0.55, 0.15)]}
    supervisions = [
        SupervisionSegment("s0", "r0", start=0.0, duration=0.5, text="hello", language="English"),
        SupervisionSegment(
            "s1",
            "r2",
            start=0.2,
            duration=0.6,
            text="ONE TWO",
            language="Klingon" if bad_language else "English",
            alignment=words,
        ),
    ]
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recordings[::2]),
        supervisions=SupervisionSet.from_segments(supervisions),
    )
    path = folder / "cuts_train.jsonl.gz"
    cuts.to_file(path)
    return path


def test_lhotse_supervisions_become_asr_lines_and_word_alignments_srwt_lines(tmp_path, clips):
    path = _cuts(clips, tmp_path)
    manifest = lhotse_cuts.convert(path, tmp_path / "out", Fields(languages={"English": "en"}))
    assert manifest == tmp_path / "out" / "cuts_train.jsonl"
    lines = _lines(manifest)
    base = {"audio_language": "en", "text_language": "en"}
    assert lines == [
        {"audio": clips[0], "task": "asr", "text": "hello", **base, "duration": 0.5},
        {
            "audio": clips[2],
            "task": "asr",
            "text": "ONE TWO",
            **base,
            "offset": 0.2,
            "duration": 0.6,
        },
        {
            "audio": clips[2],
            "task": "srwt",
            "text": "ONE TWO",
            **base,
            "offset": 0.2,
            "duration": 0.6,
            "words": [
                {"word": "ONE", "start": 0.1, "end": 0.3},
                {"word": "TWO", "start": 0.35, "end": 0.5},
            ],
        },
    ]
    assert len(read_manifest(manifest, check_audio=True)) == 3


def test_a_bad_lhotse_cut_is_named_by_file_line_and_supervision(tmp_path, clips):
    path = _cuts(clips, tmp_path, bad_language=True)
    fields = Fields(languages={"English": "en"})
    with pytest.raises(
        ManifestError,
        match=r"cuts_train\.jsonl\.gz:2: supervisions\[0\]\.language: unknown "
        r"language 'Klingon'",
    ):
        lhotse_cuts.convert(path, tmp_path / "out", fields)
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 rows"):
        manifest = lhotse_cuts.convert(path, tmp_path / "out", fields, on_error="skip")
    assert [line["text"] for line in _lines(manifest)] == ["hello"]


def test_the_command_line_maps_fields_from_yaml_and_flags(tmp_path, clips):
    datasets.DatasetDict(train=_table(clips, ["one", "二", "three"])).save_to_disk(tmp_path / "src")
    (tmp_path / "fields.yaml").write_text("audio: file\ntext: sentence\nlanguages: {English: en}\n")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": REPO}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_audio.data.convert",
            "hf",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--fields",
            str(tmp_path / "fields.yaml"),
            "--language",
            "locale",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train.jsonl: 3 lines" in result.stdout
    assert [line["audio_language"] for line in _lines(tmp_path / "out" / "train.jsonl")] == [
        "en",
        "zh",
        "en",
    ]
