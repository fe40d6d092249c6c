from __future__ import annotations

import collections
import hashlib
import json
import re
import shutil
import time
import unicodedata

import numpy as np
import pytest
import soundfile

from qwen_audio.data.corpus import corpus_read
from qwen_audio.data.demo import DemoChat, DemoCorpus, build_demo_chat
from qwen_audio.data.demo.corpus import (
    DEMO_VERSION,
    DIGITS,
    EVENT_KINDS,
    INSTRUMENTS,
    MANIFESTS,
    MNA_CLIPS_PER_SOUND,
    NOISE_KINDS,
    NUMBER_WORDS,
    SCENES,
    SENTENCES_FILE,
    SILENCE_AFTER,
    SILENCE_BEFORE,
    SNR_DB,
    SPLITS,
    VOICE_VARIANTS,
    build_demo_corpus,
    corpus_fingerprint,
    read_sentences,
)
from qwen_audio.data.demo.espeak import synthesize
from qwen_audio.data.manifest import read_manifest

SIZE = 20  # training clips per speech language (5 for ASC and AQA, 30 notes); validation and test get 5 per group


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("demo"), seed=0, size=SIZE)


def fingerprint(manifests) -> dict[str, str]:
    """sha256 of every manifest and every audio file, by path relative to the corpus folder."""
    root = manifests["train"].parent
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- the espeak-ng binding
# ------------------------------------------------------------------------------------------


def test_english_words_and_timings():
    text = "the quick brown fox sleeps on the warm mat."
    samples, rate, words = synthesize(text, "en")
    assert samples.dtype == np.int16 and rate == 22050
    assert [w for w, _, _ in words] == text.rstrip(
        "."
    ).split()  # "on the" is two words, not espeak's one
    starts = [s for _, s, _ in words]
    assert starts[0] == 0.0 and all(a < b for a, b in zip(starts, starts[1:]))
    for (_, start, end), next_start in zip(words, starts[1:] + [len(samples) / rate], strict=True):
        assert start < end <= next_start


def test_word_starts_match_the_pauses_in_the_audio():
    # commas make silent pauses; find them in the waveform independently of the word events
    samples, rate, words = synthesize("one, nine, seven, eleven.", "en")
    quiet = np.abs(samples.astype(float)) < 1e-3 * np.abs(samples).max()
    edges = np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0]))
    runs = zip(edges[::2], edges[1::2], strict=True)
    pauses = [(a / rate, b / rate) for a, b in runs if (b - a) / rate > 0.08 and b < len(samples)]
    assert len(pauses) == 3
    for (_, pause_end), (_, next_start, _) in zip(pauses, words[1:], strict=True):
        assert abs(next_start - pause_end) < 0.02  # the next word starts when the sound resumes
    for (pause_start, _), (_, _, end) in zip(pauses, words[:-1], strict=True):
        assert abs(end - pause_start) < 0.02  # the word's end excludes the pause


def test_rate_and_pitch_reach_the_synthesiser():
    text = "we walk to school every morning."
    slow, fast = (synthesize(text, "en", rate=r)[0] for r in (100, 300))
    assert 2.4 < len(slow) / len(fast) < 3.6  # words per minute x3 -> about a third of the duration

    def median_f0(samples, rate=22050):
        x = samples.astype(float)
        f0 = []
        for i in range(0, len(x) - 1024, 1024):
            frame = x[i : i + 1024]
            if np.abs(frame).max() > 0.3 * np.abs(x).max():  # voiced, loud frames
                ac = np.correlate(frame, frame, "full")[1023:]
                lag = rate // 400 + np.argmax(ac[rate // 400 : rate // 60])
                f0.append(rate / lag)
        return np.median(f0)

    low, high = (median_f0(synthesize(text, "en", pitch=p)[0]) for p in (20, 80))
    assert high > 1.3 * low


def test_mandarin_words_cover_the_sentence():
    text = "今天天气很好，我们去公园散步吧。"
    samples, rate, words = synthesize(text, "cmn")
    assert "".join(w for w, _, _ in words) == "".join(
        c for c in text if unicodedata.category(c)[0] != "P"
    )
    assert "很好" in [w for w, _, _ in words]  # one dictionary word, one event
    assert (
        all(a[1] < b[1] for a, b in zip(words, words[1:])) and words[-1][2] <= len(samples) / rate
    )


def test_synthesize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown espeak-ng voice 'xx-nope'"):
        synthesize("hello", "xx-nope")
    with pytest.raises(ValueError, match="rate must be 80..450"):
        synthesize("hello", rate=20)
    with pytest.raises(ValueError, match="text to synthesize is empty"):
        synthesize("  ")


# ---- the corpus
# --------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_cached(corpus, tmp_path):
    # built again after this process has synthesised other speech, and on another second of the
    # clock (which libespeak-ng would seed its noise from): the same bytes
    time.sleep(1.0)
    again = build_demo_corpus(tmp_path, seed=0, size=SIZE)
    assert again["train"] == tmp_path / f"demo-{DEMO_VERSION}-seed0-size{SIZE}" / "train.jsonl"
    assert fingerprint(again) == fingerprint(corpus)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert build_demo_corpus(tmp_path, seed=0, size=SIZE) == again  # found, not rebuilt
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    other = build_demo_corpus(tmp_path, seed=1, size=SIZE)
    assert fingerprint(other)["train.jsonl"] != fingerprint(again)["train.jsonl"]
    # no staging folder is left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"demo-{DEMO_VERSION}-seed{s}-size{SIZE}" for s in (0, 1)
    ]


def test_refuses_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / f"demo-{DEMO_VERSION}-seed0-size1").mkdir()
    (tmp_path / f"demo-{DEMO_VERSION}-seed0-size1" / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError,
        match=f"demo-{DEMO_VERSION}-seed0-size1 exists but holds no demo corpus built with",
    ):
        build_demo_corpus(tmp_path, seed=0, size=1)


def test_default_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_AUDIO_DEMO_DIR", str(tmp_path / "env"))
    manifests = build_demo_corpus(size=1)
    assert manifests["test"] == tmp_path / "env" / f"demo-{DEMO_VERSION}-seed0-size1" / "test.jsonl"
    assert manifests["test"].exists()


def test_manifests_are_valid_and_sized(corpus):
    tasks = {}
    for split in SPLITS:
        entries = read_manifest(corpus[split], check_audio=True)
        for entry in entries:
            info = soundfile.info(entry.audio)
            assert entry.duration == pytest.approx(info.duration, abs=1e-3)
            assert info.samplerate == 16000  # the model's rate: loading resamples nothing
            assert 0.3 <= entry.duration <= 6.0
        tasks[split] = collections.Counter(e.task for e in entries)
    speech = {"train": SIZE, "validation": max(1, SIZE // 4), "test": max(1, SIZE // 4)}
    sounds = {**speech, "train": max(1, SIZE // 4)}
    notes = {**speech, "train": MNA_CLIPS_PER_SOUND * max(1, SIZE // 4)}
    for split, counts in tasks.items():
        n, m = speech[split], sounds[split]
        assert counts == {"asr": 2 * n, "srwt": 2 * n, "mna": notes[split], "asc": m, "aqa": m}


def test_speech_is_digit_strings_held_out_from_training(corpus):
    texts = {s: {e.text for e in read_manifest(corpus[s]) if e.task == "asr"} for s in SPLITS}
    assert (
        texts["test"]
        and not texts["test"] & texts["train"]
        and not texts["validation"] & texts["train"]
    )
    for split, split_texts in texts.items():
        for text in split_texts:
            words = (
                text.split() if text.isascii() else list(text)
            )  # English words, Mandarin characters
            assert set(words) <= set(DIGITS["en"]) or set(words) <= set(DIGITS["zh"]), text
            # training has short strings too; the held-out ones stay 3 to 6 digits, as in earlier
            # corpus versions
            assert (1 if split == "train" else 3) <= len(words) <= 6, (split, text)


def test_speech_has_silence_before_and_after(corpus):
    """espeak-ng starts and ends its audio with the speech; the corpus adds silence.

    The corpus also shifts the word times.
    """
    for entry in read_manifest(corpus["train"]):
        if entry.task != "srwt":
            continue
        samples, rate = soundfile.read(entry.audio)
        assert SILENCE_BEFORE[0] - 1e-3 <= entry.words[0].start <= SILENCE_BEFORE[1] + 0.02
        assert (
            SILENCE_AFTER[0] - 1e-3
            <= entry.duration - entry.words[-1].end
            <= SILENCE_AFTER[1] + 0.02
        )
        assert (
            not samples[: int(SILENCE_BEFORE[0] * rate)].any()
            and not samples[-int(SILENCE_AFTER[0] * rate) :].any()
        )
        onset = (
            np.flatnonzero(samples)[0] / rate
        )  # espeak-ng may time a word a little before its first sound
        assert entry.words[0].start - 1e-3 <= onset < entry.words[0].end


def test_srwt_words_are_the_transcript_and_sound(corpus):
    for entry in read_manifest(corpus["train"]):
        if entry.task != "srwt":
            continue
        if entry.audio_language == "en":
            assert [w.text for w in entry.words] == re.sub(r"[^\w' ]", "", entry.text).split()
        else:
            assert "".join(w.text for w in entry.words) == re.sub(r"\W", "", entry.text)
        samples, rate = soundfile.read(entry.audio)
        overall = np.sqrt(np.mean(samples**2))
        for word in entry.words:
            piece = samples[int(word.start * rate) : int(word.end * rate)]
            assert np.sqrt(np.mean(piece**2)) > 0.2 * overall  # each word's span holds speech


def test_fingerprint_is_the_hash_of_the_manifests_and_items(corpus, tmp_path):
    folder = corpus["train"].parent
    names = (*(f"{m}.jsonl" for m in MANIFESTS), "items.json")
    files = b"".join((folder / name).read_bytes() for name in names)
    assert corpus_fingerprint(corpus) == hashlib.sha256(files).hexdigest()[:16]
    copy = shutil.copytree(folder, tmp_path / "copy")
    test = copy / "test.jsonl"
    test.write_text(
        test.read_text().replace("midi_pitch_", "midi_pitch_1", 1)
    )  # one target changed, as by other code
    assert corpus_fingerprint(
        {split: copy / f"{split}.jsonl" for split in SPLITS}
    ) != corpus_fingerprint(corpus)


def test_mna_pitch_matches_the_midi_formula(corpus):
    checked = 0
    for split in SPLITS:
        for entry in read_manifest(corpus[split]):
            if entry.task != "mna":
                continue
            target = re.fullmatch(
                r"<\|pitch\|><\|midi_pitch_(\d+)\|><\|instrument\|>(\w+)", entry.text
            )
            midi, instrument = target.groups()
            assert instrument in INSTRUMENTS
            samples, rate = soundfile.read(entry.audio)
            spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=8 * len(samples)))
            peak_hz = np.fft.rfftfreq(8 * len(samples), 1 / rate)[np.argmax(spectrum)]
            expected = 440.0 * 2 ** ((int(midi) - 69) / 12)
            assert peak_hz == pytest.approx(expected, rel=0.01)  # a semitone is 6 %
            checked += 1
    assert checked == MNA_CLIPS_PER_SOUND * max(1, SIZE // 4) + 2 * max(1, SIZE // 4)


def test_aqa_answers_match_the_counted_events(corpus):
    checked = 0
    for split in SPLITS:
        for entry in read_manifest(corpus[split]):
            if entry.task != "aqa":
                continue
            samples, rate = soundfile.read(entry.audio)
            frame = rate // 200  # 5 ms
            envelope = (
                np.abs(samples[: len(samples) // frame * frame]).reshape(-1, frame).max(axis=1)
            )
            loud = envelope > 0.2 * envelope.max()
            onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
            events = 1 + int(np.sum(np.diff(onsets) > 0.1 * 200)) if onsets.size else int(loud[0])
            counting = re.fullmatch(r"how many (\w+)s are there\?", entry.question)
            if counting:
                assert counting.group(1) in EVENT_KINDS
                assert entry.text == NUMBER_WORDS[events - 1]
                checked += 1
            else:
                assert re.fullmatch(r"are there any (\w+)s\?", entry.question) and entry.text in (
                    "yes",
                    "no",
                )
    assert checked >= 1


def test_asc_labels_and_asset_labels(corpus):
    scenes = [e.text for s in SPLITS for e in read_manifest(corpus[s]) if e.task == "asc"]
    assert set(scenes) <= set(SCENES) and "babble" in scenes
    labels = {
        line.split("\t", 1)[1]
        for line in SENTENCES_FILE.read_text().splitlines()
        if line.startswith("label\t")
    }
    assert {
        *SCENES,
        *INSTRUMENTS,
        *NUMBER_WORDS,
        "yes",
        "no",
    } <= labels  # every target word is listed in the asset
    assert len(read_sentences()["en"]) > 100 and len(read_sentences()["zh"]) > 100
    assert json.loads((corpus["train"].parent / "corpus.json").read_text())["size"] == SIZE


def test_noisy_and_unseen_rows_read_the_held_out_strings(corpus):
    """Each held-out split's noisy row is its clean ASR clips plus noise at 5 to 20 dB SNR
    (measured: the clean clip's least-squares share of the mixture against the rest), its unseen row
    the same strings in other voices."""
    for split in SPLITS[1:]:
        clean = [e for e in read_manifest(corpus[split]) if e.task == "asr"]
        noisy, unseen = (
            read_manifest(corpus[f"{split}_{row}"], check_audio=True) for row in ("noisy", "unseen")
        )
        for row in (noisy, unseen):
            expected = [("asr", e.text, e.audio_language) for e in clean]
            assert [(e.task, e.text, e.audio_language) for e in row] == expected
        for reference, mixture, other_voice in zip(clean, noisy, unseen):
            speech, mixed = (soundfile.read(e.audio)[0] for e in (reference, mixture))
            assert len(speech) == len(mixed) and np.abs(mixed).max() < 1.0
            scale = speech @ mixed / (speech @ speech)
            rest = mixed - scale * speech
            snr = 10 * np.log10(np.sum((scale * speech) ** 2) / np.sum(rest**2))
            assert SNR_DB[0] - 0.5 <= snr <= SNR_DB[1] + 0.5, (mixture.audio, snr)
            other_duration = soundfile.info(other_voice.audio).duration
            assert other_duration != pytest.approx(reference.duration, abs=1e-4)
    noise = [json.loads(line) for line in corpus["noise"].read_text().splitlines()]
    assert {line["kind"] for line in noise} == set(NOISE_KINDS["train"])
    assert all(soundfile.info(corpus["noise"].parent / line["audio"]).frames > 0 for line in noise)


def _items_from_manifests(manifests) -> dict[str, set[str]]:
    """Per split, the digit sequences (both languages alike) and the notes.

    They are read back from the manifest lines.
    """
    items = {}
    for split in SPLITS:
        keys = set()
        for entry in read_manifest(manifests[split]):
            if entry.task == "asr":
                words = entry.text.split() if entry.audio_language == "en" else list(entry.text)
                keys.add(
                    "digits:" + "".join(str(DIGITS[entry.audio_language].index(w)) for w in words)
                )
            elif entry.task == "mna":
                note = re.fullmatch(
                    r"<\|pitch\|><\|midi_pitch_(\d+)\|><\|instrument\|>(\w+)", entry.text
                )
                midi, instrument = note.groups()
                keys.add(f"note:{instrument}:{midi}")
        items[split] = keys
    return items


def test_held_out_items_are_in_no_training_split_of_any_seed_or_size(tmp_path):
    """Two sizes x two seeds: no validation or test digit string, note, babble sentence or AQA
    layout of one corpus is in the training split of any of them (split membership comes from the
    item, not from its position)."""
    corpora = [
        build_demo_corpus(tmp_path, seed=seed, size=size) for seed in (0, 1) for size in (5, 21)
    ]
    recorded = [json.loads((c["train"].parent / "items.json").read_text()) for c in corpora]
    read_back = [_items_from_manifests(c) for c in corpora]
    kinds = {key.split(":")[0] for items in recorded for split in SPLITS for key in items[split]}
    assert kinds == {"digits", "note", "aqa", "sentence"}
    for record, manifest_items in zip(recorded, read_back, strict=True):
        for split in SPLITS:
            assert manifest_items[split] <= set(record[split])
    for held_out in recorded + read_back:
        for training in recorded + read_back:
            for split in ("validation", "test"):
                assert not set(held_out[split]) & set(training["train"])
    # the seeds draw different items, so the check above compared different corpora
    assert set(recorded[0]["test"]) != set(recorded[2]["test"])
    # voices and noise types: a held-out split's unseen voices and noisy-row noise kinds are in no
    # corpus's training speech, babble, ASC scenes or training noise, nor in the other held-out
    # split
    for kind in ("voices", "noises"):
        for held_out in recorded:
            for training in recorded:
                for split in ("validation", "test"):
                    assert held_out[kind][split]
                    assert not set(held_out[kind][split]) & set(training[kind]["train"])
                assert not set(held_out[kind]["validation"]) & set(training[kind]["test"])
    for record in recorded:
        for split in SPLITS:
            variants = {v.partition("+")[2] for v in record["voices"][split]}
            assert variants <= set(VOICE_VARIANTS[split])
        assert set(record["noises"]["train"]) == {*NOISE_KINDS["train"], *SCENES}


def test_demo_names_resolve_to_the_files_the_builders_return():
    """``demo:<manifest>`` is the corpus's manifest, or for :class:`DemoChat` the chat file.

    Other paths pass.
    """
    corpus = DemoCorpus(size=1)
    assert corpus.resolve("demo:train") == str(build_demo_corpus(size=1)["train"])
    assert corpus.resolve("demo:noise") == str(build_demo_corpus(size=1)["noise"])
    assert corpus.resolve("data/train.jsonl") == "data/train.jsonl"
    assert DemoChat(size=1).resolve("demo:test") == str(build_demo_chat(size=1)["test"])
    assert corpus_read(corpus, ["data/train.jsonl", "demo:train"]) is corpus
    assert (
        corpus_read(corpus, ["data/train.jsonl"]) is None
        and corpus_read(None, ["demo:train"]) is None
    )
