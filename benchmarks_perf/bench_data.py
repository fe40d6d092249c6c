"""Training-step read throughput: JSONL manifest + one audio file per clip vs. litdata shards.

    python benchmarks_perf/bench_data.py    # 10,000 demo clips, 0/1/2 workers (~30 min, 2 cores)
    python benchmarks_perf/bench_data.py --clips 2000 --step_clips 200   # a quicker look

The script builds the embedded demo corpus (size 48). It copies its training clips into ``--clips``
distinct files, with one manifest line each. It writes that manifest as shards
(``python -m qwen_audio.data.shard``). Then it streams the batches training would get, for 0, 1 and
2 DataLoader workers and both sources in the same run
(:class:`~qwen_audio.data.streaming.StreamingAudioTextDataset`, ``max_seconds`` of padded audio a
batch). It prints clips/s and MB/s (of encoded audio) at two points:

* ``decoded``: every clip's audio decoded and resampled to 16 kHz, over all ``--clips`` clips. This
  is what the storage format changes (opening files vs. reading chunks).
* ``step``: the collated batches themselves (decoding, log-mel and the task prompt), over the first
  ``--step_clips`` clips. This is what the training step receives.

Each row checks that the shards gave the batches of the manifest (a digest of every batch, in
order). The speed-up column is shards over manifest with the same workers. The target (issue 35) is
>= 3x at 2 workers. Worker start-up is inside the time, the same for both sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from qwen_audio.data.dataset import load_segment
from qwen_audio.data.demo import build_demo_corpus
from qwen_audio.data.shard import write_shards
from qwen_audio.data.streaming import StreamingAudioTextDataset
from qwen_audio.tokenizer import QwenAudioTokenizer

from _timing import pass_or_miss

TARGET = 3.0


class DecodedStream(StreamingAudioTextDataset):
    """The same plan as training's stream, but yields each batch's decoded clips and their encoded
    bytes."""

    def __iter__(self) -> Iterator[tuple[list[np.ndarray], int]]:
        reader, readers, _ = self._reader()
        for entries in self._planned(reader, readers):
            clips = [load_segment(entry, data).numpy() for entry, data in entries]
            size = sum(
                len(data) if data is not None else os.path.getsize(entry.audio)
                for entry, data in entries
            )
            yield clips, size


def build_corpus(workdir: Path, clips: int) -> Path:
    """A manifest of ``clips`` lines, each with its own copy of a demo training clip."""
    manifest = workdir / f"clips{clips}.jsonl"
    if manifest.exists():
        return manifest
    demo = build_demo_corpus(root=workdir, size=48)["train"]
    lines = [json.loads(line) for line in demo.read_text().splitlines()]
    (workdir / "clips").mkdir(exist_ok=True)
    with open(manifest.with_suffix(".partial"), "w") as out:
        for i in range(clips):
            line = dict(lines[i % len(lines)])
            copy = workdir / "clips" / f"{i:05d}.wav"
            shutil.copyfile(demo.parent / line["audio"], copy)
            line["audio"] = str(copy)
            out.write(json.dumps(line) + "\n")
    os.replace(manifest.with_suffix(".partial"), manifest)
    return manifest


def digest(batch) -> str:
    """A hash of what a batch holds: its decoded clips, or its collated tensors."""
    hasher = hashlib.sha1()
    if isinstance(batch, dict):
        for key in ("input_ids", "labels", "audio_mel", "audio_mel_lengths"):
            hasher.update(batch[key].numpy().tobytes())
    else:
        for clip in batch[0]:
            hasher.update(np.asarray(clip).tobytes())
    return hasher.hexdigest()


def run(stream, workers: int, clips: int, mb_per_clip: float) -> tuple[float, float, list[str]]:
    """Clips/s and MB/s of the loader until ``clips`` clips have come, and the digests of its
    batches."""
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    start, count, size, digests = time.perf_counter(), 0, 0, []
    for batch in loader:
        if isinstance(batch, dict):
            count, size = count + len(batch["task"]), size + len(batch["task"]) * mb_per_clip * 1e6
        else:  # the loader hands (clips, bytes) over as a list
            count, size = count + len(batch[0]), size + int(batch[1])
        digests.append(digest(batch))
        if count >= clips:
            break
    seconds = time.perf_counter() - start
    return count / seconds, size / 1e6 / seconds, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument(
        "--step_clips", type=int, default=1000, help="clips timed into the training step"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_seconds", type=float, default=20.0)
    parser.add_argument("--workdir", default="runs/bench_data")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve()  # manifest lines name their clips by absolute path
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = build_corpus(workdir, args.clips)
    start = time.perf_counter()
    shards = write_shards([manifest], workdir / "shards")[0]
    shard_seconds = time.perf_counter() - start
    files = [json.loads(line)["audio"] for line in manifest.read_text().splitlines()]
    mb_per_clip = sum(os.path.getsize(f) for f in files) / len(files) / 1e6
    tokenizer = QwenAudioTokenizer.demo()
    print(
        f"{len(files)} clips, {mb_per_clip * len(files):.0f} MB of audio; "
        f"sharding took {shard_seconds:.1f} s; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores at the start"
    )
    print(
        "\n| stage | workers | manifest + files clips/s | MB/s | shards clips/s | MB/s "
        "| shards / manifest | same batches |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios = {}
    for stage, kind, clips in (
        ("decoded", DecodedStream, args.clips),
        ("step", StreamingAudioTextDataset, args.step_clips),
    ):
        for workers in args.workers:
            results = [
                run(kind([str(source)], tokenizer, args.max_seconds), workers, clips, mb_per_clip)
                for source in (manifest, shards)
            ]
            (files_rate, files_mb, files_batches), (shard_rate, shard_mb, shard_batches) = results
            same = len(files_batches) == len(shard_batches) and files_batches == shard_batches
            ratios[stage, workers] = shard_rate / files_rate
            print(
                f"| {stage} | {workers} | {files_rate:.0f} | {files_mb:.1f} | {shard_rate:.0f} "
                f"| {shard_mb:.1f} | {shard_rate / files_rate:.2f}x | {'yes' if same else 'NO'} |",
                flush=True,
            )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if ("step", 2) in ratios:
        ratio = ratios["step", 2]
        print(
            f"target shards >= {TARGET:.0f}x manifest + files into the step at 2 workers: "
            f"{ratio:.2f}x {pass_or_miss(ratio >= TARGET)}"
        )


if __name__ == "__main__":
    main()
