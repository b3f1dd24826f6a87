"""Ingest AudioSet-format audio into the spectrogram store, in parallel on Ray.

    python -m data.ingest --segments balanced_train_segments.csv unbalanced_train_segments.csv.gz \\
        --class-index class_labels_indices.csv --audio-dir audio/ --store store/ --split train

1. Labels: the segment CSVs as one partition. An unknown MID is dropped from its clip (a clip
   left without labels is skipped: "unknown_mid"), a repeated YTID keeps its first row; both named.
2. Files: each clip's file is looked up in --audio-dir (one directory walk) by trying each
   --audio-pattern with each --ext; a clip without a file is skipped, "missing".
3. Order and shards: train is sorted by ascending rarest-label count over the clips with files
   (see data/store.py), other splits keep CSV order; fixed chunks of --rows-per-shard clips of
   that list, one shard each, so a rerun maps to the same shards.
4. One Ray task per shard (all CPUs of the machine or cluster): decode, AST log-mel
   (data/features.py), write the shard atomically. A clip that gives no spectrogram is skipped
   with its reason (unreadable, empty, too_short, non_finite, error).
5. The split is recorded in the manifest (a new store gets the class index's classes);
   STORE/ingest_report.json lists every skipped clip with its reason. Classes of the index
   without a clip in the split are named in a one-line warning: they are left out of the
   split's priors and metrics.

Inputs are checked before anything is written: a bad label file, a missing --audio-dir, or
no clip with an audio file (the error names the patterns tried and an example path) stop the
run with no store created. A run in which no clip gives a spectrogram is an error too (the
report is written, the split is not recorded). A new store goes only into a new or empty
directory.

Resume: finished shards are journaled, with the sha256 of their bytes, in
STORE/ingest_journal_<split>.jsonl; rerunning the same command keeps every shard whose chunk is
unchanged and whose file still has that hash ("reused") and computes the rest, damaged shards
included ("shards_redone" in the report names them and why). The audio files must be readable
from every Ray node.

Prints a short summary (`--json`: the report without its long lists, as one JSON document).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.balance import class_counts, rarest_label_count, rarest_label_order
from data.cli import InputError, add_list, add_store, parser, positive_int, run
from data.features import FRAMES, AudioError, clip_log_mel, store_features
from data.labels import Segments, read_class_index, read_segments
from data.manifest import HASH, MANIFEST, StoreError, update_json
from data.shards import file_hashes
from data.store import Store, create_store, open_store

__all__ = ["IngestConfig", "AudioFinder", "read_labels", "ingest", "summary", "format_summary", "main"]

PATTERNS = ("{ytid}.{ext}", "Y{ytid}.{ext}", "{ytid}_{start}.{ext}", "{ytid}_{start_g}.{ext}")
EXTS = ("wav", "flac", "ogg")
REPORT = "ingest_report.json"


@dataclass
class IngestConfig:
    segments: list[str]
    class_index: str
    audio_dir: str
    store: str
    split: str
    patterns: tuple[str, ...] = PATTERNS
    exts: tuple[str, ...] = EXTS
    frames: int = FRAMES
    rows_per_shard: int = 512       # 512 x 1024 x 128 float16 = 128 MiB shards
    order: str | None = None        # "rarest_label" or "given"; None: rarest_label for "train"

    def __post_init__(self):
        self.order = self.order or ("rarest_label" if self.split == "train" else "given")
        for key in ("frames", "rows_per_shard"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{key}: must be an integer >= 1, got {value!r}")
        if not self.split or self.split != Path(self.split).name or self.split in (".", ".."):
            raise InputError(f"split: {self.split!r} is not a plain name (used as a directory of the store)")
        if self.order not in ("rarest_label", "given"):
            raise InputError(f"order: {self.order!r} is not 'rarest_label' or 'given'")
        if not self.segments:
            raise InputError("segments: no segment CSV given")


class AudioFinder:
    """Finds a clip's audio file under `root`: the first of `patterns` x `exts` that exists.

    Pattern fields: {ytid}, {start} with three decimals ("30.000"), {start_g} shortest ("30"), {ext}.
    A pattern without "/" matches a file of that name anywhere under `root`.
    """

    def __init__(self, root: str | Path, patterns=PATTERNS, exts=EXTS):
        self.root, self.patterns, self.exts = Path(root), tuple(patterns), tuple(exts)
        for p in self.patterns:
            try:
                p.format(ytid="x", start="0.000", start_g="0", ext="wav")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"audio pattern {p!r}: bad field {e}; "
                                 "use {ytid} {start} {start_g} {ext}") from None
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: audio directory does not exist"
                                    f"{' (a file)' if self.root.exists() else ''}")
        self._dir_of: dict[str, str] = {}
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            for f in files:
                self._dir_of.setdefault(f, dirpath)

    def find(self, ytid: str, start: float) -> str | None:
        fields = {"ytid": ytid, "start": f"{start:.3f}", "start_g": f"{start:g}"}
        for pattern in self.patterns:
            for ext in self.exts:
                name = pattern.format(ext=ext, **fields)
                if "/" in name:
                    if (self.root / name).is_file():
                        return str(self.root / name)
                elif name in self._dir_of:
                    return os.path.join(self._dir_of[name], name)
        return None


def read_labels(paths, class_index) -> tuple[Segments, dict, list[dict]]:
    """The segment CSVs as one partition, with what a strict read would refuse left out.

    Returns (segments, issues {unknown_mids {mid: labels}, duplicate_ytids}, skipped clips).
    """
    segments, issues = read_segments(paths, class_index, strict=False)
    skipped = [{"clip_id": c, "reason": "unknown_mid", "detail": "only unknown MIDs"} for c in issues.unlabelled]
    found = {"unknown_mids": issues.unknown_mids, "duplicate_ytids": issues.duplicate_ytids} if issues else {}
    return segments, found, skipped


def _compute_shard(root: str, name: str, clips: list[tuple[str, str, list[int]]], frames: int) -> dict:
    """Ray task: log-mel of each (clip id, path, labels), then the shard written atomically.

    Returns {file (None if no clip worked), rows, bytes, skipped [[clip id, reason, detail]]}.
    """
    store = open_store(root)
    mel = np.empty((len(clips), frames, store.mels), dtype=np.float16)
    ids, labels, n_frames, skipped = [], [], [], []
    for clip_id, path, clip_labels in clips:
        try:
            mel[len(ids)], n = clip_log_mel(path, frames)
        except AudioError as e:
            skipped.append([clip_id, e.reason, str(e)])
        except Exception as e:  # noqa: BLE001 - one odd file must not stop the others
            skipped.append([clip_id, "error", f"{path}: {e!r}"])
        else:
            ids.append(clip_id)
            labels.append(clip_labels)
            n_frames.append(n)
    entry = {"file": None, "rows": 0, "bytes": 0}
    if ids:
        entry = store.write_shard(name, ids, labels, mel[:len(ids)], n_frames)
    return {**entry, "skipped": skipped}


def _check_reuse(journal: dict[str, dict], chunks: list[dict], root: Path) -> tuple[dict, list]:
    """The journaled shards that can be kept: same chunk, and a file with the bytes and the
    sha256 the journal recorded. Returns (reused {name: entry}, redone [{file, why}]): shards
    of an unchanged chunk whose file is damaged, missing or unverifiable, to be computed again."""
    reused, redone, to_hash = {}, [], []
    for c in chunks:
        entry = journal.get(c["name"])
        if entry is None or entry.get("key") != c["key"]:
            continue  # never finished, or another chunk now: computed as new
        if entry.get("file") is None:  # no clip of the chunk gave a spectrogram
            reused[c["name"]] = entry
            continue
        path = root / entry["file"]
        why = None
        if not path.is_file():
            why = "missing"
        elif path.stat().st_size != entry["bytes"]:
            why = f"{path.stat().st_size} bytes, journal says {entry['bytes']}"
        if why:
            redone.append({"file": entry["file"], "why": why})
        else:
            to_hash.append((c["name"], entry, path))
    for (name, entry, path), got in zip(to_hash, file_hashes(p for _, _, p in to_hash)):
        if got == entry[HASH]:
            reused[name] = entry
        else:
            redone.append({"file": entry["file"], "why": f"content changed ({HASH} {got[:16]}..., "
                                                         f"journal says {entry[HASH][:16]}...)"})
    return reused, redone


def _open_store(cfg: IngestConfig, class_index) -> Store:
    """Open (or create) the store and check it can take this split."""
    root = Path(cfg.store)
    if not (root / MANIFEST).exists():
        classes = [{"index": i, "mid": m, "name": n}
                   for i, (m, n) in enumerate(zip(class_index.mids, class_index.names))]
        return create_store(root, classes, store_features(cfg.frames))
    store = open_store(root)
    store.check_writable()
    if store.features != store_features(cfg.frames):
        if store.features.get("frames") != cfg.frames:
            raise StoreError(f"{root}: the store has {store.features.get('frames')} frames a clip, this ingest "
                             f"{cfg.frames}: pass --frames {store.features.get('frames')}")
        raise StoreError(f"{root}: the store's features differ from this ingest's (--frames {cfg.frames})")
    if store.mids != class_index.mids:
        raise StoreError(f"{root}: the store's classes differ from {cfg.class_index}")
    written = _read_report(root).get(cfg.split, {}).get("fingerprint")
    if cfg.split in store.splits and store.split_info(cfg.split).get("fingerprint") != written:
        raise StoreError(f"{root}: split {cfg.split!r} exists and was not written by this ingest, or was "
                         "changed since (e.g. by data.split): ingest into another split or store")
    return store


def _read_report(root: Path) -> dict:
    path = root / REPORT
    return json.loads(path.read_text()) if path.exists() else {}


def _read_journal(path: Path) -> dict[str, dict]:
    """Journal lines {name, key, file, rows, bytes, skipped}, the last per shard; torn lines are ignored."""
    entries = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        with suppress(json.JSONDecodeError):
            entry = json.loads(line)
            entries[entry["name"]] = entry
    return entries


IN_PROCESS_CLIPS = 256  # an ingest of at most this many clips runs here: starting Ray would take longer


def _compute(todo: list[dict], root: Path, journal: Path, split: str, frames: int) -> tuple[dict, list]:
    """Compute the shards, journaling each finished one; returns (entries, failed). Small
    ingests (IN_PROCESS_CLIPS) run in this process, larger ones as Ray tasks (a local Ray is
    started quietly unless one is running or RAY_ADDRESS names one)."""
    if sum(len(c["clips"]) for c in todo) <= IN_PROCESS_CLIPS:
        done = {}
        with tqdm(total=sum(len(c["clips"]) for c in todo), unit="clip", desc=f"ingest {split}") as bar, \
                open(journal, "a") as log:
            for chunk in todo:
                done[chunk["name"]] = {"name": chunk["name"], "key": chunk["key"],
                                       **_compute_shard(str(root), chunk["name"], chunk["clips"], frames)}
                log.write(json.dumps(done[chunk["name"]]) + "\n")
                log.flush()
                bar.update(len(chunk["clips"]))
        return done, []
    import ray
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, configure_logging=True, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_compute_shard)
    pending = {task.remote(str(root), c["name"], c["clips"], frames): c for c in todo}
    done, failed = {}, []
    with tqdm(total=sum(len(c["clips"]) for c in todo), unit="clip", desc=f"ingest {split}",
              smoothing=0.1) as bar, open(journal, "a") as log:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(ref)
            bar.update(len(chunk["clips"]))
            try:
                entry = {"name": chunk["name"], "key": chunk["key"], **ray.get(ref)}
            except ray.exceptions.RayError as e:  # a worker died (memory?): retried on rerun
                failed.append({"file": chunk["name"], "error": str(e).strip().splitlines()[-1]})
                continue
            log.write(json.dumps(entry) + "\n")
            log.flush()
            done[chunk["name"]] = entry
    return done, failed


def _plan(cfg: IngestConfig, segments: Segments, paths: list, n_classes: int) -> list[dict]:
    """The clips with files, ordered, cut into chunks {name, key, clips [(clip id, path, labels)]}."""
    rows = np.array([j for j, p in enumerate(paths) if p is not None], dtype=np.int64)
    if cfg.order == "rarest_label" and len(rows):
        rows = rows[rarest_label_order(segments.labels.take(rows), n_classes)]
    chunks = []
    for i, start in enumerate(range(0, len(rows), cfg.rows_per_shard)):
        part = rows[start:start + cfg.rows_per_shard]
        ids = segments.clip_ids[part].tolist()
        key = hashlib.sha256(("\n".join(ids) + f"\n{cfg.frames}").encode()).hexdigest()[:16]  # the chunk
        clips = [(ids[k], paths[j], segments.labels[j].tolist()) for k, j in enumerate(part)]
        chunks.append({"name": f"{cfg.split}/part-{i:05d}.parquet", "key": key, "clips": clips})
    return chunks


def _collect(chunks: list[dict], entries: dict) -> tuple[list, list, list, list]:
    """(shards, clip ids, labels, skipped) of the finished chunks, in chunk order."""
    shards, ids, labels, skipped = [], [], [], []
    for c in chunks:
        if c["name"] not in entries:
            continue
        entry = entries[c["name"]]
        bad = {s[0] for s in entry["skipped"]}
        skipped += [{"clip_id": s[0], "reason": s[1], "detail": s[2]} for s in entry["skipped"]]
        ids += [clip for clip, _, _ in c["clips"] if clip not in bad]
        labels += [clip_labels for clip, _, clip_labels in c["clips"] if clip not in bad]
        if entry["file"] is not None:
            shards.append({k: entry[k] for k in ("file", "rows", "bytes", HASH) if k in entry})
    return shards, ids, labels, skipped


def ingest(cfg: IngestConfig) -> dict:
    """Ingest one split (see the module docstring); returns the split's report."""
    t0 = time.time()
    # every input is checked before the store is created or touched
    class_index = read_class_index(cfg.class_index)
    segments, issues, label_skipped = read_labels(cfg.segments, class_index)
    finder = AudioFinder(cfg.audio_dir, cfg.patterns, cfg.exts)
    paths = [finder.find(y, s) for y, s in zip(segments.clip_ids, segments.start)]
    _check_found(cfg, segments, paths, label_skipped)
    store = _open_store(cfg, class_index)
    missing = [{"clip_id": y, "reason": "missing", "detail": f"no file in {cfg.audio_dir}"}
               for y, p in zip(segments.clip_ids, paths) if p is None]
    chunks = _plan(cfg, segments, paths, len(class_index))
    journal_path = store.root / f"ingest_journal_{cfg.split}.jsonl"
    reused, redone = _check_reuse(_read_journal(journal_path), chunks, store.root)
    todo = [c for c in chunks if c["name"] not in reused]
    computed, failed = _compute(todo, store.root, journal_path, cfg.split, cfg.frames) if todo else ({}, [])
    entries = {**reused, **computed}
    shards, ids, labels, decode_skipped = _collect(chunks, entries)
    skipped = label_skipped + missing + decode_skipped
    report = {"split": cfg.split, "complete": not failed, "config": asdict(cfg),
              "clips_listed": len(segments) + len(label_skipped), "ingested": len(ids),
              "reused": sum(e["rows"] for e in reused.values()),
              "computed": sum(len(c["clips"]) for c in todo),
              "shards": len(chunks), "shards_reused": len(reused), "shards_redone": redone,
              "failed_shards": failed,
              "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped": skipped,
              "label_issues": issues}
    if cfg.order == "rarest_label" and ids:  # skipped clips can put a few ties out of order
        r = rarest_label_count(labels, class_counts(labels, len(class_index)))
        report["rows_out_of_order"] = int((np.diff(r) < 0).sum())
    if not failed and ids:
        empty = np.flatnonzero(class_counts(labels, len(class_index)) == 0)
        report["empty_classes"] = empty.tolist()
        report["fingerprint"] = store.add_split(cfg.split, shards, ids, labels, cfg.order)["fingerprint"]
        keep = {s["file"] for s in shards}
        for stale in (store.root / cfg.split).glob("part-*.parquet*"):
            if f"{cfg.split}/{stale.name}" not in keep:
                stale.unlink()
        journal_path.write_text("".join(json.dumps(entries[c["name"]]) + "\n" for c in chunks))
    report["seconds"] = round(time.time() - t0, 2)
    report["clips_per_s"] = round(report["computed"] / max(report["seconds"], 0.01), 2)
    update_json(store.root / REPORT, lambda reports: {**reports, cfg.split: report})
    if not failed and not ids:
        reasons = ", ".join(f"{r} {n}" for r, n in report["skipped_by_reason"].items())
        raise InputError(f"{store.root / REPORT}: no clip of split {cfg.split!r} gave a spectrogram "
                         f"({reasons}); the split is not recorded")
    if report.get("empty_classes"):
        n = len(report["empty_classes"])
        print(f"warning: {n} of {len(class_index)} classes of {cfg.class_index} have no clip in split "
              f"{cfg.split!r}: they are left out of its priors and metrics (listed in {store.root / REPORT})",
              file=sys.stderr)
    return report


def _check_found(cfg: IngestConfig, segments: Segments, paths: list, label_skipped: list) -> None:
    """No clip listed, or no clip with an audio file, is an error naming what was tried."""
    names = ", ".join(cfg.segments)
    if not len(segments):
        raise InputError(f"{names}: no clip with a known label ({len(label_skipped)} rows left out)")
    if any(p is not None for p in paths):
        return
    ytid, start = str(segments.clip_ids[0]), float(segments.start[0])
    example = Path(cfg.audio_dir) / cfg.patterns[0].format(ytid=ytid, start=f"{start:.3f}",
                                                           start_g=f"{start:g}", ext=cfg.exts[0])
    raise InputError(f"{cfg.audio_dir}: no audio file for any of the {len(segments)} clips of {names}; "
                     f"tried patterns {' '.join(cfg.patterns)} with extensions {' '.join(cfg.exts)} "
                     f"(e.g. {example}); see --audio-pattern and --ext")


def summary(report: dict, shown: int = 20) -> dict:
    """The report without its long lists: counts, and the first `shown` clip ids per skip reason."""
    out = {k: v for k, v in report.items() if k not in ("skipped", "config", "empty_classes")}
    if "empty_classes" in report:
        out["empty_classes"] = len(report["empty_classes"])
    out["skipped_examples"] = {r: [s["clip_id"] for s in report["skipped"] if s["reason"] == r][:shown]
                               for r in report["skipped_by_reason"]}
    if report["label_issues"]:
        duplicates = report["label_issues"]["duplicate_ytids"]
        out["label_issues"] = {**report["label_issues"], "duplicate_ytids": duplicates[:shown],
                               "duplicate_count": len(duplicates)}
    return out


def format_summary(report: dict, root: str) -> str:
    """A few readable lines: clips ingested, shards, what was skipped and why."""
    lines = [f"{root} [{report['split']}]: {report['ingested']:,} of {report['clips_listed']:,} clips ingested, "
             f"{report['shards']} shard(s) ({report['shards_reused']} reused), {report['seconds']} s"]
    if report["skipped_by_reason"]:
        reasons = ", ".join(f"{r} {n:,}" for r, n in report["skipped_by_reason"].items())
        lines.append(f"skipped: {reasons} (each clip and why in {Path(root) / REPORT})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser(prog="python -m data.ingest", description=__doc__)
    add_list(p, "--segments", required=True, metavar="CSV",
             help="segment CSV(s) of one partition (.csv or .csv.gz)")
    p.add_argument("--class-index", required=True, metavar="CSV",
                   help="class index CSV (index,mid,display_name): AudioSet's, or one of just your classes")
    p.add_argument("--audio-dir", required=True, metavar="DIR",
                   help="directory with the audio files (searched recursively)")
    add_store(p, "store directory (a new store: a new or empty directory)")
    p.add_argument("--split", required=True, metavar="NAME", help="split name, e.g. train, eval_public")
    add_list(p, "--audio-pattern", default=PATTERNS, metavar="PATTERN",
             help="file names to try, in order; fields {ytid}, {start} (three decimals, 30.000), "
                  f"{{start_g}} (30), {{ext}} (default: {' '.join(PATTERNS)})")
    add_list(p, "--ext", default=EXTS, metavar="EXT",
             help=f"extensions to try for {{ext}} (default: {' '.join(EXTS)})")
    p.add_argument("--frames", type=positive_int, default=FRAMES, metavar="N",
                   help="keep the first N frames x 10 ms of each clip (default %(default)s = 10.24 s, AST's "
                        "input): a longer clip is cut, a shorter one zero-padded at the end of its log-mel "
                        "(a 10 s clip gives 998 frames); clips under 0.1 s are skipped (too_short). Every "
                        "split of a store has the same N")
    p.add_argument("--rows-per-shard", type=positive_int, default=IngestConfig.rows_per_shard, metavar="N",
                   help="clips per shard (default %(default)s)")
    p.add_argument("--order", choices=["rarest_label", "given"],
                   help="row order (default: rarest_label for the split 'train', else CSV order)")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    return run(_main, p, argv)


def _main(a) -> int:
    report = ingest(IngestConfig(a.segments, a.class_index, a.audio_dir, a.store, a.split,
                                 tuple(a.audio_pattern), tuple(a.ext), a.frames, a.rows_per_shard, a.order))
    print(json.dumps(summary(report), indent=1) if a.json else format_summary(report, a.store))
    if report["label_issues"]:
        issues = report["label_issues"]
        print(f"label files: left out {len(issues['unknown_mids'])} unknown MID(s) "
              f"{sorted(issues['unknown_mids'])[:5]} and {len(issues['duplicate_ytids'])} repeated YTID row(s) "
              f"{issues['duplicate_ytids'][:5]}; see ingest_report.json", file=sys.stderr)
    if report["shards_redone"]:
        redone = report["shards_redone"]
        print(f"{len(redone)} damaged or unverifiable shard(s) computed again, e.g. {redone[0]['file']} "
              f"({redone[0]['why']}); see ingest_report.json", file=sys.stderr)
    if not report["complete"]:
        print(f"{len(report['failed_shards'])} shard(s) failed; the split is not recorded: rerun to retry",
              file=sys.stderr)
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
