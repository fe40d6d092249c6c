"""On-the-fly augmentation of training audio: speed, reverberation, additive noise and gain.

The transforms are what NeMo, lhotse/icefall and ESPnet apply to ASR training. They act on the
decoded 16 kHz waveform before the log-mel, in the DataLoader workers
(:meth:`qwen_audio.data.dataset.AudioTextDataset.augmented`). The signal processing is torchaudio's
(``speed``, ``fftconvolve``, ``add_noise``).

Each transform fires with its own probability. All choices come from a generator seeded by
``(seed, epoch, example index)`` (:func:`example_generator`). An epoch's audio is thus a function of
its plan. A resumed run therefore trains on the audio of the uninterrupted run.

Speed perturbation changes the duration. The entry's word timestamps and duration are scaled with
it, so SRWT targets stay true.

Noise and room impulse responses come from manifests of JSON lines
``{"audio": "noise/pink_0.wav"}``. Relative paths are read against the manifest's folder. An
optional ``kind`` names the noise type.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torchaudio.functional as F

from qwen_audio.audio import SAMPLE_RATE, load_audio
from qwen_audio.data.manifest import ManifestEntry, ManifestError
from qwen_audio.prompts import TimedWord


@dataclass
class Augment:
    """Augmentation settings, ``data.augment`` in a recipe's YAML.

    Every transform is off (probability 0) by default.

    Args:
        tasks: the tasks whose examples are augmented. Speech by default, for two reasons. A speed
            change moves a note's pitch (MNA). Noise over a scene or a count of clicks can change
            its answer.
        speed_prob, speeds: speed perturbation to a factor drawn uniformly from ``speeds``. The
            pitch moves with it, as in Kaldi's 0.9/1.0/1.1 recipe.
        rir_prob, rir: convolution with an impulse response drawn from the manifest ``rir``.
        noise_prob, noise, snr_db: additive noise. A random stretch of a clip drawn from the
            manifest ``noise`` is mixed in. Its signal-to-noise ratio is drawn uniformly from
            ``snr_db`` (low, high) in dB.
        gain_prob, gain_db: a gain drawn uniformly from ``gain_db`` (low, high) in dB.
    """

    tasks: list[str] = field(default_factory=lambda: ["asr", "srwt"])
    speed_prob: float = 0.0
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    rir_prob: float = 0.0
    rir: str | None = None
    noise_prob: float = 0.0
    noise: str | None = None
    snr_db: tuple[float, float] = (5.0, 20.0)
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __post_init__(self) -> None:
        for name in ("speed_prob", "rir_prob", "noise_prob", "gain_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"data.augment.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        for name, manifest in (("rir", self.rir), ("noise", self.noise)):
            if getattr(self, f"{name}_prob") > 0 and not manifest:
                raise ValueError(
                    f"data.augment.{name}_prob is {getattr(self, f'{name}_prob')} but no "
                    f"data.augment.{name} manifest is given"
                )
        if not self.speeds or min(self.speeds) <= 0:
            raise ValueError(f"data.augment.speeds must be positive factors, got {self.speeds}")
        for name in ("snr_db", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(
                    f"data.augment.{name} must be (low, high), got {getattr(self, name)}"
                )

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.speed_prob, self.rir_prob, self.noise_prob, self.gain_prob))


@dataclass(frozen=True)
class Draw:
    """The choices for one example: ``None`` for a transform that does not fire."""

    speed: float | None = None
    rir: int | None = None
    noise: int | None = None
    noise_start: float = 0.0  # fraction of the noise clip where its stretch starts
    snr_db: float | None = None
    gain_db: float | None = None


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of example ``index`` in ``epoch``, whatever worker loads it, in any order."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def read_audio_list(path: str) -> list[str]:
    """The audio files a noise or impulse-response manifest lists (relative to its folder)."""
    files = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"not JSON: {err}", path=path, line=number) from None
            if not isinstance(record, dict) or not isinstance(record.get("audio"), str):
                raise ManifestError(
                    "a line needs an 'audio' path", field="audio", path=path, line=number
                )
            unknown = set(record) - {"audio", "kind"}
            if unknown:
                raise ManifestError(f"unknown field(s) {sorted(unknown)}", path=path, line=number)
            files.append(os.path.join(os.path.dirname(os.path.abspath(path)), record["audio"]))
    if not files:
        raise ManifestError("no audio listed", path=path)
    return files


class Augmenter:
    """Draw (:meth:`draw`) and apply (:meth:`apply`) one example's augmentation.

    Noise and impulse responses are decoded once, on first use, and kept. Each worker keeps its own.
    """

    def __init__(
        self, config: Augment, noise: list[str] | None = None, rir: list[str] | None = None
    ) -> None:
        self.config = config
        self._files = {"noise": noise or [], "rir": rir or []}
        self._audio: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def from_config(cls, config: Augment) -> Augmenter:
        """Build an augmenter with the manifests of ``config`` read (paths already resolved)."""
        return cls(
            config,
            *(
                read_audio_list(m) if m and p > 0 else None
                for m, p in ((config.noise, config.noise_prob), (config.rir, config.rir_prob))
            ),
        )

    def _clips(self, kind: str) -> list[torch.Tensor]:
        if kind not in self._audio:
            self._audio[kind] = [load_audio(path) for path in self._files[kind]]
        return self._audio[kind]

    def draw(self, task: str, generator: torch.Generator) -> Draw | None:
        """Draw the choices for an example of ``task``, or ``None`` when no transform fires."""
        c = self.config
        if task not in c.tasks:
            return None
        fires = torch.rand(4, generator=generator) < torch.tensor(
            [c.speed_prob, c.rir_prob, c.noise_prob, c.gain_prob]
        )
        values = torch.rand(6, generator=generator).tolist()  # drawn whatever fires
        if not fires.any():
            return None
        speed, rir, noise, gain = fires.tolist()
        return Draw(
            speed=c.speeds[_pick(values[0], len(c.speeds))] if speed else None,
            rir=_pick(values[1], len(self._files["rir"])) if rir else None,
            noise=_pick(values[2], len(self._files["noise"])) if noise else None,
            noise_start=values[3],
            snr_db=c.snr_db[0] + values[4] * (c.snr_db[1] - c.snr_db[0]) if noise else None,
            gain_db=c.gain_db[0] + values[5] * (c.gain_db[1] - c.gain_db[0]) if gain else None,
        )

    def apply(
        self, draw: Draw, entry: ManifestEntry, audio: torch.Tensor
    ) -> tuple[ManifestEntry, torch.Tensor]:
        """Transform ``audio`` (the entry's segment) and return it with the entry.

        A speed change rescales the entry's times.
        """
        if draw.speed is not None and draw.speed != 1.0:
            before = len(audio)
            audio = F.speed(audio[None], SAMPLE_RATE, draw.speed)[0][0]
            entry = rescale_times(entry, before / SAMPLE_RATE, len(audio) / SAMPLE_RATE)
        if draw.rir is not None:
            rir = self._clips("rir")[draw.rir]
            audio = F.fftconvolve(audio, rir / rir.norm())[: len(audio)]
        if draw.noise is not None:
            audio = F.add_noise(
                audio[None],
                noise_stretch(self._clips("noise")[draw.noise], len(audio), draw.noise_start)[None],
                torch.tensor([draw.snr_db]),
            )[0]
        if draw.gain_db is not None:
            audio = F.gain(audio, draw.gain_db)
        return entry, audio


def _pick(fraction: float, count: int) -> int:
    """The index a uniform ``fraction`` in [0, 1) picks among ``count`` items."""
    return min(int(fraction * count), count - 1)


def noise_stretch(noise: torch.Tensor, length: int, start: float) -> torch.Tensor:
    """``length`` samples of ``noise`` from the fraction ``start`` of it, repeated if shorter."""
    begin = int(start * len(noise))
    repeats = -(-(begin + length) // len(noise))
    return noise.repeat(repeats)[begin : begin + length]


def rescale_times(entry: ManifestEntry, before: float, duration: float) -> ManifestEntry:
    """Return the entry whose audio of ``before`` seconds is now ``duration`` seconds long.

    Word times are scaled by ``duration / before``. The offset becomes 0, because the segment was
    cut before the change.
    """
    scale = duration / before
    words = entry.words and tuple(
        TimedWord(w.text, round(w.start * scale, 3), min(round(w.end * scale, 3), duration))
        for w in entry.words
    )
    return replace(entry, offset=0.0, duration=duration, words=words)
