"""Spoken words as an AudioSet-format dataset: real audio that nobody here recorded, spoken by a
speech synthesiser (espeak-ng, a Debian package: `apt-get install espeak-ng`), to try the tool on
real sound without a download.

    python -m data.spoken --out words/                      # 10 words, about 1,650 clips
    python -m data.spoken --out words/ --words 3 --most 12 --fewest 4 --eval 4   # a test's few

Each clip is 2 s: one to three words, spoken by one of espeak-ng's English voices at a random
speed and pitch, at a random place in noise (5 to 20 dB below the speech); its labels are the
words spoken. The first word of the training clips is drawn so that the words are skewed like
AudioSet's classes: `--most` clips for the commonest down to `--fewest` for the rarest; the
other words of a clip are drawn the same way. Two evaluation sets: a flat one (`--eval` clips
per word) and a skewed one (the training skew, scaled to about as many clips). Written:

    <out>/audio/<clip id>.wav                  22,050 Hz mono, as espeak-ng speaks
    <out>/class_labels_indices.csv             index,mid,display_name  (mid: /spoken/<word>)
    <out>/train_segments.csv, eval_flat_segments.csv, eval_skewed_segments.csv
                                               AudioSet's segment format

then the commands that ingest them (data.ingest) and reserve a validation split (data.split)
are printed. The same --seed gives the same clips with the same espeak-ng.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from data.cli import Failure, parser, run

__all__ = ["WORDS", "VOICES", "make_spoken_words"]

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
SECONDS, RATE = 2.0, 22_050


def _espeak() -> str:
    """The espeak-ng program, or a Failure saying how to install it."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise Failure("espeak-ng is not installed: apt-get install espeak-ng (Debian's package)")
    return found


def _speak(espeak: str, words: list[str], rng: np.random.Generator, tmp: Path) -> np.ndarray:
    """`words` spoken by a random voice at a random speed (120-200 words/min) and pitch: float32
    samples at RATE."""
    out = tmp / "clip.wav"
    voice = VOICES[rng.integers(len(VOICES))]
    cmd = [espeak, "-v", voice, "-s", str(int(rng.integers(120, 201))), "-p", str(int(rng.integers(20, 81))),
           "-g", str(int(rng.integers(2, 12))), "-w", str(out), " ".join(words)]
    subprocess.run(cmd, check=True, capture_output=True)
    samples, rate = sf.read(out, dtype="float32")
    if rate != RATE:
        raise Failure(f"espeak-ng spoke at {rate} Hz, expected {RATE}")
    return samples


def _in_noise(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`speech` at a random place in SECONDS of noise 5-20 dB below it (cut to fit)."""
    n = int(SECONDS * RATE)
    speech = speech[:n]
    clip = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(0, n - speech.size + 1))
    clip[start:start + speech.size] = speech
    power = float(np.mean(speech ** 2)) or 1e-6
    noise = rng.normal(0, np.sqrt(power / 10 ** (rng.uniform(5, 20) / 10)), n).astype(np.float32)
    mixed = clip + noise
    return mixed / max(1.0, float(np.abs(mixed).max()) / 0.99)


def _skewed(words: tuple[str, ...], most: int, fewest: int) -> np.ndarray:
    """Per word its share of first words: `most` down to `fewest`, geometric in the word's rank."""
    k = np.arange(len(words))
    counts = most * (fewest / most) ** (k / max(1, len(words) - 1))
    return counts / counts.sum()


def _write_segments(path: Path, rows: list[tuple[str, list[str]]]) -> None:
    """An AudioSet segment CSV: three header lines, then `id, 0.000, 2.000, "labels"` per clip."""
    lines = ["# Segments csv created by data.spoken", f"# num_ytids={len(rows)}, num_segs={len(rows)}",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{clip}, 0.000, {SECONDS:.3f}, "{",".join(f"/spoken/{w}" for w in labels)}"' for clip, labels in rows]
    path.write_text("\n".join(lines) + "\n")


def make_spoken_words(out: Path, n_words: int = 10, most: int = 350, fewest: int = 10, n_eval: int = 30,
                      seed: int = 0) -> dict[str, int]:
    """Write the dataset (see the module docstring) into the new or empty directory `out`;
    returns the clips per split."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise Failure(f"{out}: not empty; data.spoken writes into a new or empty directory")
    espeak, words = _espeak(), WORDS[:n_words]
    rng = np.random.default_rng(seed)
    p = _skewed(words, most, fewest)
    n_train = int(round(sum(most * (fewest / most) ** (k / max(1, len(words) - 1)) for k in range(len(words)))))
    splits = {"train": [words[i] for i in rng.choice(len(words), n_train, p=p)],
              "eval_flat": [w for w in words for _ in range(n_eval)],
              "eval_skewed": [words[i] for i in rng.choice(len(words), n_eval * len(words), p=p)]}
    (out / "audio").mkdir(parents=True)
    (out / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f"{i},/spoken/{w},{w}\n" for i, w in enumerate(words)))
    with tempfile.TemporaryDirectory() as tmp:
        for split, firsts in splits.items():
            rows = []
            for i, first in enumerate(firsts):
                others = [words[j] for j in rng.choice(len(words), int(rng.integers(0, 3)), p=p)]
                spoken = [first, *others]
                clip = f"{split}{i:05d}"
                sf.write(out / "audio" / f"{clip}.wav", _in_noise(_speak(espeak, spoken, rng, Path(tmp)), rng), RATE)
                rows.append((clip, sorted(set(spoken), key=words.index)))
            _write_segments(out / f"{split}_segments.csv", rows)
    return {s: len(v) for s, v in splits.items()}


def _main(a) -> int:
    counts = make_spoken_words(Path(a.out), a.words, a.most, a.fewest, a.eval, a.seed)
    out = Path(a.out).resolve()
    q = {k: shlex.quote(str(out / k)) for k in ("class_labels_indices.csv", "audio", "store")}
    print(", ".join(f"{s}: {n:,} clips" for s, n in counts.items()) + f" in {out}; to use them:")
    for split in counts:
        print(f"  python -m data.ingest --segments {shlex.quote(str(out / f'{split}_segments.csv'))} --class-index "
              f"{q['class_labels_indices.csv']} --audio-dir {q['audio']} --store {q['store']} --split {split}")
    print(f"  python -m data.split --store {q['store']} --from train --to valid --min-per-class {2 * a.fewest}")
    return 0


def main(argv=None) -> int:
    p = parser("python -m data.spoken", __doc__)
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--words", type=int, default=len(WORDS), help=f"how many of {', '.join(WORDS)} (default all)")
    p.add_argument("--most", type=int, default=350, help="training clips of the commonest word (default 350)")
    p.add_argument("--fewest", type=int, default=10, help="training clips of the rarest word (default 10)")
    p.add_argument("--eval", type=int, default=30, help="clips per word in the flat evaluation set (default 30)")
    p.add_argument("--seed", type=int, default=0)
    return run(_main, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
