"""Benchmark the ingest front end: clips/s per core, against torchaudio's fbank alone.

    python bench/ingest.py                 # ~40 s: 32 clips per format, then Ray on 96 a core
    python bench/ingest.py --no-ray        # the single-core numbers only

Prints JSON. Per format (10 s of noise + tones written as WAV/FLAC at 16 kHz and 44.1 kHz):
clips/s of the full path of data/features.py on one core (decode + resample + fbank + pad);
the ceiling, torchaudio.compliance.kaldi.fbank alone on the same 16 kHz waveforms already in
memory, in the same run; the ratio (target >= 0.8 at 16 kHz); and the hours 2M clips would take
on a 16-core node and on a 10-node cluster of them, extrapolated from the per-core rate (it
assumes storage keeps up: 2M clips write 2M x 256 KiB = 512 GB of shards). With Ray: data.ingest
itself on all local cores, clips/s and its efficiency against cores x the per-core rate.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from data.features import FBANK, clip_log_mel

AUDIOSET_CLIPS = 2_000_000
NODE_CORES = 16
CLUSTER_NODES = 10
FORMATS = {"wav_16k": (16000, "wav"), "flac_16k": (16000, "flac"),
           "wav_44k": (44100, "wav"), "flac_44k": (44100, "flac")}


def write_clips(directory: Path, n: int, rate: int, ext: str, seconds: float) -> list[Path]:
    """`n` clips of noise plus two tones, 16-bit, mono; returns their paths."""
    rng = np.random.default_rng(rate)
    t = np.arange(int(rate * seconds)) / rate
    paths = []
    for i in range(n):
        x = 0.1 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t) \
            + 0.1 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
        path = directory / f"clip{i:05d}_{rate}.{ext}"
        sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def best_rates(passes: dict, repeats: int = 3) -> dict[str, float]:
    """Items/s of each {name: (fn, items)}, the best of `repeats` passes; the passes of different
    names are interleaved, so that load from other processes hits them alike."""
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(repeats):
        for name, (fn, items) in passes.items():
            t0 = time.perf_counter()
            for x in items:
                fn(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(passes[name][1]) / best[name] for name in passes}


def hours(rate_per_core: float, cores: int) -> float:
    return round(AUDIOSET_CLIPS / (rate_per_core * cores) / 3600, 2)


def ray_ingest(directory: Path, paths: list[Path]) -> dict:
    """data.ingest of `paths` on all local cores, after a warm-up split of one clip per core
    (so every worker has imported torch)."""
    import ray
    from data.ingest import IngestConfig, ingest
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    cores = int(ray.cluster_resources()["CPU"])
    (directory / "classes.csv").write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n')
    rows = [f'{p.stem}, 0.000, 10.000, "/m/{"ab"[i % 2]}"\n' for i, p in enumerate(paths)]
    try:
        for split, clips, rows_per_shard in [("warmup", cores, 1),
                                             ("measured", len(paths), len(paths) // (4 * cores))]:
            (directory / f"{split}.csv").write_text("".join(rows[:clips]))
            report = ingest(IngestConfig([str(directory / f"{split}.csv")], str(directory / "classes.csv"),
                                         str(directory), str(directory / "store"), split, exts=("wav",),
                                         rows_per_shard=max(1, rows_per_shard)))
    finally:
        ray.shutdown()
    return {"cores": cores, "clips": report["computed"], "seconds": report["seconds"],
            "clips_per_s": report["clips_per_s"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python bench/ingest.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32, metavar="N",
                   help="clips per format (default %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default %(default)s)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray ingest run")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # per-core figures
    out: dict = {"clips_per_format": a.clips, "seconds_per_clip": a.seconds, "torch_threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {name: write_clips(tmp, a.clips, rate, ext, a.seconds)
                 for name, (rate, ext) in FORMATS.items()}
        waves = [torch.from_numpy(sf.read(p, dtype="float32")[0])[None] for p in files["wav_16k"]]
        rates = best_rates({"fbank_only_16k": (lambda w: kaldi.fbank(w, **FBANK), waves),
                            **{name: (clip_log_mel, paths) for name, paths in files.items()}})
        ceiling = rates.pop("fbank_only_16k")
        out["fbank_only_16k"] = {"clips_per_s_per_core": round(ceiling, 1)}
        for name, rate in rates.items():
            out[name] = {"clips_per_s_per_core": round(rate, 1),
                         "ratio_to_fbank_only": round(rate / ceiling, 3),
                         "hours_2M_16_cores": hours(rate, NODE_CORES),
                         "hours_2M_10_nodes": hours(rate, NODE_CORES * CLUSTER_NODES)}
        if not a.no_ray:
            (tmp / "ray").mkdir()
            clips = write_clips(tmp / "ray", 96 * (os.cpu_count() or 1), 16000, "wav", a.seconds)
            ray = ray_ingest(tmp / "ray", clips)
            per_core = out["wav_16k"]["clips_per_s_per_core"]
            ray["efficiency"] = round(ray["clips_per_s"] / (ray["cores"] * per_core), 3)
            out["ray_ingest_wav_16k"] = ray
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
