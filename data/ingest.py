"""Ingest AudioSet-format audio into the spectrogram store, in parallel on Ray.

    python -m data.ingest --segments balanced_train_segments.csv unbalanced_train_segments.csv.gz \\
        --class-index class_labels_indices.csv --audio-dir audio/ --store store/ --split train
    python -m data.ingest --packs packs/balanced_train.h5 --class-index class_labels_indices.csv \\
        --store store/ --split train

Two sources: segment CSVs with a directory of one audio file a clip (--segments, --audio-dir),
or packed copies (--packs: PANNs-style HDF5, WebDataset-style tar shards, Parquet with audio
bytes; layouts in data/packs.py, a how-to in docs/your-audioset-copy.md).

1. Labels: the segment CSVs as one partition, or what each pack's clips carry. An unknown label
   is dropped from its clip and named with its count (a clip left without labels is skipped:
   "unknown_mid"; --unknown-labels error refuses them instead), a clip with an empty label list
   is skipped ("no_labels"), a repeated clip id keeps its first clip; all named.
2. Files: each clip's file is looked up in --audio-dir (one directory walk) by trying each
   --audio-pattern with each --ext; a clip without a file is skipped, "missing"; a clip id that
   is a path ("../x", "/x") names no file there and is skipped unread, "bad_clip_id".
   Packs: each part of a pack (a tar, a run of HDF5 rows or Parquet row groups) is read start
   to end by one task, its clips decoded into staging shards (STORE/.ingest-<split>/, deleted
   once the split is recorded); a clip the pack cannot give is skipped with its reason
   ("missing" audio, "no_labels", "truncated" tar, "unreadable").
3. Order and shards: train is sorted by ascending rarest-label count (see data/store.py), other
   splits keep CSV (pack) order; fixed chunks of --rows-per-shard clips of that list, one shard
   each, so a rerun maps to the same shards.
4. One Ray task per shard (all CPUs of the machine or cluster): decode, AST log-mel
   (data/features.py), write the shard atomically; packs: copy the shard's rows from the staging
   shards. A clip that gives no spectrogram is skipped with its reason (unreadable, empty,
   truncated, too_short, non_finite, error). Work of at most 256 clips runs in this process.
5. The split is recorded in the manifest (a new store gets the class index's classes);
   STORE/ingest_report.json lists every skipped clip with its reason. Classes of the index
   without a clip in the split are named in a one-line warning: they are left out of the
   split's priors and metrics.

Inputs are checked before anything is written: a bad label file, a missing --audio-dir, a pack
that does not fit its layout, or no clip with an audio file (the error names the patterns tried
and an example path) stop the run with no store created; so does a Ray that does not start.
A pack's labels are checked as the pack is read (they live in it). A run in which no clip gives
a spectrogram is an error too (the report is written, the split is not recorded). A new store
goes only into a new or empty directory.

Resume: finished shards are journaled, with the sha256 of their bytes, in
STORE/ingest_journal_<split>.jsonl (pack parts in STORE/ingest_parts_<split>.jsonl); rerunning
the same command keeps every shard whose chunk is unchanged and whose file still has that hash
("reused") and computes the rest, damaged shards included ("shards_redone" in the report names
them and why). Ctrl-C stops with one line; the same command resumes. The audio files and packs
must be readable from every Ray node.

Prints a short summary (`--json`: the report without its long lists, as one JSON document).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from data.balance import as_multilabels, class_counts, rarest_label_count, rarest_label_order
from data.cli import Failure, InputError, add_list, add_store, is_plain_name, parser, positive_int, run, split_name
from data.features import FRAMES, AudioError, clip_log_mel, store_features
from data.journal import IN_PROCESS_CLIPS, read_journal, run_jobs, start_ray, verify_files
from data.labels import ClassIndex, Segments, read_class_index, read_segments, unknown_labels
from data.manifest import HASH, MANIFEST, StoreError, read_manifest, update_json
from data.packs import FORMATS, PackFields, PackPart, pack_log_mel, pack_parts, read_part, resolve_labels
from data.shards import RowGroups, close_shards
from data.store import Store, check_new_store, create_store, open_store

__all__ = ["IngestConfig", "AudioFinder", "not_a_name", "read_labels", "store_frames", "ingest", "label_warnings", "summary",
           "format_summary", "main"]

PATTERNS = ("{ytid}.{ext}", "Y{ytid}.{ext}", "{ytid}_{start}.{ext}", "{ytid}_{start_g}.{ext}")
EXTS = ("wav", "flac", "ogg")
REPORT = "ingest_report.json"
UNKNOWN_LABELS = ("drop", "error")
TAR_CLIP_BYTES = 256 << 10  # a tar's clips, guessed from its size to choose Ray (a 10 s FLAC: 200-600 KiB)


@dataclass
class IngestConfig:
    segments: list[str]             # segment CSVs (with audio_dir), or none (with packs)
    class_index: str
    audio_dir: str | None
    store: str
    split: str
    patterns: tuple[str, ...] = PATTERNS
    exts: tuple[str, ...] = EXTS
    frames: int | None = None       # None: the store's frames (a new store: FRAMES)
    rows_per_shard: int = 512       # 512 x 1024 x 128 float16 = 128 MiB shards
    order: str | None = None        # "rarest_label" or "given"; None: rarest_label for "train"
    unknown_labels: str = "drop"    # "drop": left out of their clips, named; "error": refused
    packs: tuple[str, ...] = ()     # pack files or directories, instead of segments + audio_dir
    pack_format: str | None = None  # one of data.packs.FORMATS; None: from the files' suffixes
    fields: PackFields = PackFields()

    def __post_init__(self):
        self.order = self.order or ("rarest_label" if self.split == "train" else "given")
        for key in ("frames", "rows_per_shard"):
            value = getattr(self, key)
            if key == "frames" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{key}: must be an integer >= 1, got {value!r}")
        split_name(self.split, "split")
        if self.order not in ("rarest_label", "given"):
            raise InputError(f"order: {self.order!r} is not 'rarest_label' or 'given'")
        if self.unknown_labels not in UNKNOWN_LABELS:
            raise InputError(f"unknown_labels: {self.unknown_labels!r} is not one of {', '.join(UNKNOWN_LABELS)}")
        if bool(self.segments) == bool(self.packs):
            raise InputError("give the segment CSVs (--segments, with --audio-dir) or the packs (--packs), "
                             f"{'not both' if self.packs else 'one of them'}")
        if bool(self.segments) != bool(self.audio_dir):
            raise InputError("--audio-dir goes with --segments (a pack holds its audio)" if self.packs else
                             "--audio-dir: the directory of the audio files is needed with --segments")
        if self.pack_format not in (None, *FORMATS):
            raise InputError(f"pack_format: {self.pack_format!r} is not one of {', '.join(FORMATS)}")


def not_a_name(clip_id: str) -> str | None:
    """Why a clip id cannot be part of a file name under the audio directory, or None: a path
    ("../../x", "/abs/x": it would name a file outside) is never looked up."""
    if not is_plain_name(clip_id):
        return f"clip id {clip_id!r} is a path, not a name: not looked up (only files under --audio-dir are read)"
    return None


class AudioFinder:
    """Finds a clip's audio file under `root`: the first of `patterns` x `exts` that exists.

    Pattern fields: {ytid}, {start} with three decimals ("30.000"), {start_g} shortest ("30"), {ext}.
    A pattern without "/" matches a file of that name anywhere under `root`.
    """

    def __init__(self, root: str | Path, patterns=PATTERNS, exts=EXTS):
        self.root, self.patterns, self.exts = Path(root), tuple(patterns), tuple(exts)
        for p in self.patterns:
            try:
                name = PurePosixPath(p.format(ytid="x", start="0.000", start_g="0", ext="wav"))
            except (KeyError, IndexError, ValueError) as e:
                raise InputError(f"audio pattern {p!r}: bad field {e}; "
                                 "use {ytid} {start} {start_g} {ext}") from None
            if name.is_absolute() or ".." in name.parts:
                raise InputError(f"audio pattern {p!r}: must stay inside the audio directory "
                                 "(no absolute path, no '..')")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: audio directory does not exist"
                                    f"{' (a file)' if self.root.exists() else ''}")
        self._dir_of: dict[str, str] = {}
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            for f in files:
                self._dir_of.setdefault(f, dirpath)

    def find(self, ytid: str, start: float) -> str | None:
        """The clip's file, or None (always for a clip id that is a path: see `not_a_name`)."""
        if not_a_name(ytid):
            return None
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


def read_labels(paths, class_index, unknown: str = "drop") -> tuple[Segments, dict, list[dict]]:
    """The segment CSVs as one partition, with what a strict read would refuse left out.

    `unknown` "drop": unknown labels are left out of their clips, a clip left without a known
    label is skipped ("unknown_mid"); "error": they are an InputError naming each with its count.
    A clip with an empty label list is skipped ("no_labels").
    Returns (segments, issues {unknown_mids {mid: labels}, duplicate_ytids}, skipped clips).
    """
    segments, issues = read_segments(paths, class_index, strict=False)
    if unknown == "error" and issues.unknown_mids:
        raise InputError(f"{', '.join(map(str, paths))}: {unknown_labels(issues.unknown_mids, class_index)} "
                         "(--unknown-labels error)")
    skipped = ([{"clip_id": c, "reason": "unknown_mid", "detail": "only unknown MIDs"} for c in issues.unlabelled]
               + [{"clip_id": c, "reason": "no_labels", "detail": "an empty label list"} for c in issues.no_labels])
    found = {"unknown_mids": issues.unknown_mids, "duplicate_ytids": issues.duplicate_ytids} if issues else {}
    return segments, found, skipped


def _write_spectrograms(store: Store, clips, frames: int, name_of, rows: int) -> tuple[list, list, list]:
    """Log-mel of each (clip id, labels, name, decode) of `clips` (decode() -> (log-mel float32
    [frames, mels], valid frames); `name` names the clip's audio in errors), written through the
    store as shards of up to `rows` rows named name_of(k) as each fills. Returns (shard entries,
    written [(clip id, labels)] in row order, skipped [[clip id, reason, detail]])."""
    mel = np.empty((rows, frames, store.mels), dtype=np.float16)
    files, written, skipped, held, n_frames = [], [], [], [], []
    for clip_id, labels, name, decode in clips:
        try:
            mel[len(held)], n = decode()
        except AudioError as e:
            skipped.append([clip_id, e.reason, str(e)])
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must not stop the others
            skipped.append([clip_id, "error", f"{name}: {e!r}"])
            continue
        held.append((clip_id, labels))
        n_frames.append(n)
        if len(held) == rows:
            files.append(store.write_shard(name_of(len(files)), *zip(*held), mel, n_frames))
            written += held
            held, n_frames = [], []
    if held:
        files.append(store.write_shard(name_of(len(files)), *zip(*held), mel[:len(held)], n_frames))
    return files, written + held, skipped


def _compute_shard(root: str, name: str, clips: list[tuple[str, str, list[int]]], frames: int) -> dict:
    """Ray task: log-mel of each (clip id, path, labels), then the shard written atomically.

    Returns {file (None if no clip worked), rows, bytes, skipped [[clip id, reason, detail]]}.
    """
    decoded = ((clip_id, labels, path, partial(clip_log_mel, path, frames)) for clip_id, path, labels in clips)
    files, _, skipped = _write_spectrograms(open_store(root), decoded, frames, lambda k: name, max(len(clips), 1))
    return {**(files[0] if files else {"file": None, "rows": 0, "bytes": 0}), "skipped": skipped}


def _decode_part(root: str, part: PackPart, fields: PackFields, mids: list[str], frames: int, stem: str,
                 rows: int) -> dict:
    """Ray task: every clip of a pack part, in pack order, labels resolved against the class
    index's `mids` and decoded into staging shards `stem`-NNN.parquet of up to `rows` rows.
    Returns {files, written [[clip id, labels]] in staging-row order, skipped, unknown {label: count}}."""
    index_of = {m: i for i, m in enumerate(mids)}
    unknown, skipped = Counter(), []

    def clips():
        for clip in read_part(part, fields):
            labels, bad = ([], []) if clip.problem else resolve_labels(clip.labels, index_of, len(mids))
            unknown.update(bad)
            problem = clip.problem or _label_problem(labels, bad)
            if problem:
                skipped.append([clip.clip_id, *problem])
                continue
            name = f"{part.path}: {clip.clip_id}"
            yield clip.clip_id, labels, name, partial(pack_log_mel, clip, frames, name)

    files, written, failed = _write_spectrograms(open_store(root), clips(), frames, lambda k: f"{stem}-{k:03d}.parquet",
                                                 rows)
    return {"files": files, "written": [[c, list(labels)] for c, labels in written], "skipped": skipped + failed,
            "unknown": dict(unknown)}


def _label_problem(labels: list[int], unknown: list[str]) -> tuple[str, str] | None:
    """Why a clip with these labels (class indices; labels not in the class index) is skipped, or None."""
    if labels:
        return None
    if unknown:
        return "unknown_mid", f"only labels not in the class index: {', '.join(unknown)}"
    return "no_labels", "an empty label list"


def _assemble_shard(root: str, name: str, files: list[str], rows: list[int]) -> dict:
    """Ray task: shard `name` from staging shards, its rows `rows` (global row indices of `files`
    taken in order) in that order, written through the store. Returns its entry, skipped []."""
    close_shards()  # a staging file of this name may have been written again since this process read it
    store = open_store(root)
    table = RowGroups.of([store.root / f for f in files]).read(np.asarray(rows, dtype=np.int64))
    entry = store.write_table(name, table)
    close_shards()
    return {**entry, "skipped": []}


def _check_reuse(journal: dict[str, dict], chunks: list[dict], root: Path) -> tuple[dict, list]:
    """The journaled shards that can be kept: same chunk, and a file with the bytes and the
    sha256 the journal recorded. Returns (reused {name: entry}, redone [{file, why}]): shards
    of an unchanged chunk whose file is damaged, missing or unverifiable, to be computed again."""
    reused, kept = {}, []
    for c in chunks:
        entry = journal.get(c["name"])
        if entry is None or entry.get("key") != c["key"]:
            continue  # never finished, or another chunk now: computed as new
        if entry.get("file") is None:  # no clip of the chunk gave a spectrogram
            reused[c["name"]] = entry
        else:
            kept.append(entry)
    redone = []
    for entry, why in zip(kept, verify_files(kept, root)):
        if why is None:
            reused[entry["name"]] = entry
        else:
            redone.append({"file": entry["file"], "why": why})
    return reused, redone


def store_frames(store: str) -> int:
    """The frames a clip of the store at `store` has (an ingest without --frames adopts them), or
    FRAMES for a new store."""
    manifest = Path(store) / MANIFEST
    return int(read_manifest(manifest)["features"]["frames"]) if manifest.exists() else FRAMES


def _existing_store(cfg: IngestConfig, class_index) -> Store | None:
    """The store, checked to take this split, or None for a new one (`check_new_store`: a new or
    empty directory); nothing is written."""
    root = Path(cfg.store)
    if not (root / MANIFEST).exists():
        check_new_store(root)
        return None
    store = open_store(root)
    store.check_writable()
    if store.features != store_features(cfg.frames):
        if store.features.get("frames") != cfg.frames:
            raise StoreError(f"{root}: the store has {store.features.get('frames')} frames a clip, this ingest "
                             f"{cfg.frames}: omit --frames to adopt the store's, or pass --frames {store.features.get('frames')}")
        raise StoreError(f"{root}: the store's features differ from this ingest's (--frames {cfg.frames})")
    if store.mids != class_index.mids:
        raise StoreError(f"{root}: the store's classes differ from {cfg.class_index}")
    written = _read_report(root).get(cfg.split, {}).get("fingerprint")
    if cfg.split in store.splits and store.split_info(cfg.split).get("fingerprint") != written:
        raise StoreError(f"{root}: split {cfg.split!r} exists and was not written by this ingest, or was "
                         "changed since (e.g. by data.split): ingest into another split or store")
    return store


def _new_store(cfg: IngestConfig, class_index: ClassIndex) -> Store:
    """Create the store: the class index's classes, this ingest's features."""
    classes = [{"index": i, "mid": m, "name": n} for i, (m, n) in enumerate(zip(class_index.mids, class_index.names))]
    return create_store(cfg.store, classes, store_features(cfg.frames))


def _read_report(root: Path) -> dict:
    path = root / REPORT
    return json.loads(path.read_text()) if path.exists() else {}


def _plan(cfg: IngestConfig, ids: np.ndarray, labels, sources: list, n_classes: int, source_key=None) -> list[dict]:
    """The clips with a source (a path, a staging row; None: left out), ordered, cut into chunks
    {name, key, clips [(clip id, source, labels)]}. A chunk's key: its clip ids and frames (and
    `source_key(source)` of its clips where given)."""
    rows = np.array([j for j, s in enumerate(sources) if s is not None], dtype=np.int64)
    if cfg.order == "rarest_label" and len(rows):
        rows = rows[rarest_label_order(labels.take(rows), n_classes)]
    chunks = []
    for i, start in enumerate(range(0, len(rows), cfg.rows_per_shard)):
        part = rows[start:start + cfg.rows_per_shard]
        chunk_ids = ids[part].tolist()
        salt = "".join(sorted({source_key(sources[j]) for j in part})) if source_key else ""
        key = hashlib.sha256(("\n".join(chunk_ids) + f"\n{cfg.frames}" + salt).encode()).hexdigest()[:16]
        clips = [(chunk_ids[k], sources[j], labels[j].tolist()) for k, j in enumerate(part)]
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


def _shard_jobs(chunks: list[dict], args) -> list[dict]:
    """The jobs computing `chunks`: {name, key, weight (clips), args} with args(chunk)."""
    return [{"name": c["name"], "key": c["key"], "weight": len(c["clips"]), "args": args(c)} for c in chunks]


def _bar(cfg: IngestConfig, what: str = "", unit: str = "clip") -> dict:
    return {"desc": f"ingest {cfg.split}{what}", "unit": unit, "smoothing": 0.1}


def _chunk_journal(cfg: IngestConfig) -> Path:
    return Path(cfg.store) / f"ingest_journal_{cfg.split}.jsonl"


def ingest(cfg: IngestConfig) -> dict:
    """Ingest one split (see the module docstring); returns the split's report."""
    t0 = time.time()
    class_index = read_class_index(cfg.class_index)  # every input is checked before the store is touched
    if cfg.frames is None:
        cfg = replace(cfg, frames=store_frames(cfg.store))
    return _ingest_packs(cfg, class_index, t0) if cfg.packs else _ingest_files(cfg, class_index, t0)


def _ingest_files(cfg: IngestConfig, class_index: ClassIndex, t0: float) -> dict:
    """Segment CSVs + a directory of audio files: plan from the labels, one task per shard."""
    segments, issues, label_skipped = read_labels(cfg.segments, class_index, cfg.unknown_labels)
    finder = AudioFinder(cfg.audio_dir, cfg.patterns, cfg.exts)
    paths = [finder.find(y, s) for y, s in zip(segments.clip_ids, segments.start)]
    _check_found(cfg, segments, paths, label_skipped, issues, class_index)
    store = _existing_store(cfg, class_index)
    missing = [{"clip_id": y, "reason": "bad_clip_id", "detail": why} if (why := not_a_name(y)) else
               {"clip_id": y, "reason": "missing", "detail": f"no file in {cfg.audio_dir}"}
               for y, p in zip(segments.clip_ids, paths) if p is None]
    chunks = _plan(cfg, segments.clip_ids, segments.labels, paths, len(class_index))
    reused, redone = _check_reuse(read_journal(_chunk_journal(cfg)), chunks, Path(cfg.store))
    todo = [c for c in chunks if c["name"] not in reused]
    clips = sum(len(c["clips"]) for c in todo)
    if clips > IN_PROCESS_CLIPS:
        start_ray(f"this ingest of {clips:,} clips")
    store = store or _new_store(cfg, class_index)  # everything is checked and Ray is up: the first write
    jobs = _shard_jobs(todo, lambda c: (str(store.root), c["name"], c["clips"], cfg.frames))
    computed, failed = run_jobs(_compute_shard, jobs, _chunk_journal(cfg), clips > IN_PROCESS_CLIPS, **_bar(cfg))
    return _finish(cfg, store, class_index, chunks, {**reused, **computed}, failed, label_skipped + missing, t0, {
        "clips_listed": len(segments) + len(label_skipped), "computed": clips,
        "reused": sum(e["rows"] for e in reused.values()), "shards_reused": len(reused), "shards_redone": redone,
        "label_issues": issues})


def _decode_parts(cfg: IngestConfig, class_index: ClassIndex, parts: dict[str, PackPart], log: Path, use_ray: bool,
                  keys: list[str]) -> tuple[dict, list]:
    """Decode the pack parts `keys` (of `parts` {key: part}) into staging shards
    STORE/.ingest-<split>/<key>-NNN.parquet, journaled in `log`; --unknown-labels error stops at
    the first part that held an unknown label. Returns run_jobs' (entries, failed)."""
    by_clips = all(parts[k].clips is not None for k in keys)
    jobs = [{"name": k, "key": k, "weight": parts[k].clips if by_clips else max(1, parts[k].size >> 20),
             "args": (cfg.store, parts[k], cfg.fields, class_index.mids, cfg.frames, f".ingest-{cfg.split}/{k}",
                      cfg.rows_per_shard)} for k in keys]
    return run_jobs(_decode_part, jobs, log, use_ray, partial(_refuse_unknown, cfg, class_index, parts),
                    **_bar(cfg, " (decode)", "clip" if by_clips else "MB"))


def _part_key(cfg: IngestConfig, class_index: ClassIndex, part: PackPart) -> str:
    """What a part's staging shards are computed from: the file (path, size, mtime), the rows,
    the fields, the frames, the class index."""
    what = [str(Path(part.path).resolve()), part.format, part.start, part.stop, part.size, part.mtime_ns,
            asdict(cfg.fields), cfg.frames, cfg.rows_per_shard, class_index.mids]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _refuse_unknown(cfg: IngestConfig, class_index: ClassIndex, parts: dict[str, PackPart], entry: dict) -> None:
    """--unknown-labels error: a pack part that held an unknown label stops the ingest, named."""
    if cfg.unknown_labels == "error" and entry["unknown"]:
        raise InputError(f"{parts[entry['name']].path}: {unknown_labels(entry['unknown'], class_index)} "
                         "(--unknown-labels error)")


def _ingest_packs(cfg: IngestConfig, class_index: ClassIndex, t0: float) -> dict:
    """Packs: each part decoded into staging shards (journaled), the split planned from the clips
    they gave, then each shard copied from the staging shards in its order."""
    parts = {_part_key(cfg, class_index, p): p
             for p in pack_parts(cfg.packs, cfg.pack_format, cfg.fields, len(class_index), cfg.rows_per_shard)}
    store, root = _existing_store(cfg, class_index), Path(cfg.store)
    part_log = root / f"ingest_parts_{cfg.split}.jsonl"
    known = {key: entry for key, entry in read_journal(part_log).items() if key in parts}
    for entry in known.values():
        _refuse_unknown(cfg, class_index, parts, entry)
    clips = sum(p.size // TAR_CLIP_BYTES if p.clips is None else p.clips for p in parts.values())
    use_ray = clips > IN_PROCESS_CLIPS
    if use_ray:
        start_ray(f"this ingest of {len(parts)} pack part(s), about {clips:,} clips")
    store = store or _new_store(cfg, class_index)  # everything is checked and Ray is up: the first write
    decode = partial(_decode_parts, cfg, class_index, parts, part_log, use_ray)
    read, failed = decode([key for key in parts if key not in known])
    results = {**known, **read}
    written, skipped, issues = ([], [], {}) if failed else _pack_clips(parts, results)
    ids, labels = np.array([c[0] for c in written], dtype=str), as_multilabels([c[1] for c in written])
    chunks = _plan(cfg, ids, labels, [c[2] for c in written], len(class_index), source_key=lambda s: s[0])
    reused, redone = _check_reuse(read_journal(_chunk_journal(cfg)), chunks, root)
    todo = [c for c in chunks if c["name"] not in reused]
    computed, again = {}, {}
    if not failed:
        again, failed = _restage(parts, known, todo, root, decode)
        results.update(again)
    if not failed:
        jobs = _shard_jobs(todo, lambda c: (cfg.store, c["name"], *_staging_rows(c, results)))
        computed, failed = run_jobs(_assemble_shard, jobs, _chunk_journal(cfg), use_ray, **_bar(cfg, " (shards)"))
    report = _finish(cfg, store, class_index, chunks, {**reused, **computed}, failed, skipped, t0, {
        "clips_listed": sum(len(e["written"]) + len(e["skipped"]) for e in results.values()),
        "computed": sum(len(e["written"]) + len(e["skipped"]) for e in [*read.values(), *again.values()]),
        "reused": sum(e["rows"] for e in reused.values()), "shards_reused": len(reused), "shards_redone": redone,
        "label_issues": issues, "packs": {"format": next(iter(parts.values())).format, "parts": len(parts),
                                          "parts_reused": len(known) - len(again)}})
    if report["complete"]:
        shutil.rmtree(root / f".ingest-{cfg.split}", ignore_errors=True)  # the staging shards
    return report


def _pack_clips(parts: dict[str, PackPart], results: dict[str, dict]) -> tuple[list, list, dict]:
    """The clips the parts gave, in pack order: written [(clip id, labels, (part key, staging
    row))], skipped [{clip_id, reason, detail}], label issues {unknown_mids, duplicate_ytids}
    (a clip id seen again is left out: the first kept)."""
    written, skipped, seen, repeated, unknown = [], [], set(), [], Counter()
    for key in parts:
        entry = results[key]
        unknown.update(entry["unknown"])
        skipped += [{"clip_id": c, "reason": r, "detail": d} for c, r, d in entry["skipped"]]
        for row, (clip_id, labels) in enumerate(entry["written"]):
            if clip_id in seen:
                repeated.append(clip_id)
            else:
                seen.add(clip_id)
                written.append((clip_id, labels, (key, row)))
    return written, skipped, ({"unknown_mids": dict(unknown), "duplicate_ytids": repeated} if unknown or repeated else {})


def _restage(parts: dict[str, PackPart], journaled: dict[str, dict], chunks: list[dict], root: Path,
             decode) -> tuple[dict, list]:
    """Decode again the `journaled` parts (decoded by an earlier run) whose staging shards
    `chunks` need and are gone or damaged (deleted once the split was recorded, say); the same
    clips must come out. Returns `decode`'s (entries, failed)."""
    needed = dict.fromkeys(key for c in chunks for _, (key, _), _ in c["clips"] if key in journaled)
    again, failed = decode([key for key in needed if any(verify_files(journaled[key]["files"], root))])
    for key, entry in again.items():
        if entry["written"] != journaled[key]["written"]:
            raise Failure(f"{parts[key].path}: gives other clips than when it was first read (same size and time): "
                          "ingest it into a new split")
    return again, failed


def _staging_rows(chunk: dict, results: dict[str, dict]) -> tuple[list[str], list[int]]:
    """The staging files a chunk's clips are in, and each clip's row in their concatenation."""
    files, offset, rows, total = [], {}, [], 0
    for _, (key, row), _ in chunk["clips"]:
        entry = results[key]
        starts = np.cumsum([0] + [f["rows"] for f in entry["files"]])
        k = int(np.searchsorted(starts, row, side="right") - 1)
        staged = entry["files"][k]
        if staged["file"] not in offset:
            offset[staged["file"]], total = total, total + staged["rows"]
            files.append(staged["file"])
        rows.append(offset[staged["file"]] + row - int(starts[k]))
    return files, rows


def _finish(cfg: IngestConfig, store: Store, class_index: ClassIndex, chunks: list[dict], entries: dict, failed: list,
            skipped: list, t0: float, counts: dict) -> dict:
    """The split's report (`counts`: what the route counted) written to STORE/ingest_report.json,
    and, when every shard is done and some clip gave a spectrogram, the split recorded, the
    shards no chunk has now deleted and the journal rewritten; returns the report."""
    shards, ids, labels, decode_skipped = _collect(chunks, entries)
    skipped = skipped + decode_skipped
    report = {"split": cfg.split, "complete": not failed, "config": asdict(cfg), "ingested": len(ids), **counts,
              "shards": len(chunks), "failed_shards": failed,
              "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped": skipped}
    if cfg.order == "rarest_label" and ids:  # skipped clips can put a few ties out of order
        r = rarest_label_count(labels, class_counts(labels, len(class_index)))
        report["rows_out_of_order"] = int((np.diff(r) < 0).sum())
    if not failed and ids:
        report["empty_classes"] = np.flatnonzero(class_counts(labels, len(class_index)) == 0).tolist()
        report["fingerprint"] = store.add_split(cfg.split, shards, ids, labels, cfg.order)["fingerprint"]
        keep = {s["file"] for s in shards}
        for stale in (store.root / cfg.split).glob("part-*.parquet*"):
            if f"{cfg.split}/{stale.name}" not in keep:
                stale.unlink()
        _chunk_journal(cfg).write_text("".join(json.dumps(entries[c["name"]]) + "\n" for c in chunks))
    report["seconds"] = round(time.time() - t0, 2)
    report["clips_per_s"] = round(report["computed"] / max(report["seconds"], 0.01), 2)
    update_json(store.root / REPORT, lambda reports: {**reports, cfg.split: report})
    if not failed and not ids:
        reasons = ", ".join(f"{r} {n}" for r, n in report["skipped_by_reason"].items())
        unknown = report["label_issues"].get("unknown_mids")
        raise InputError(f"{store.root / REPORT}: no clip of split {cfg.split!r} gave a spectrogram ({reasons})"
                         f"{'; ' + unknown_labels(unknown, class_index) if unknown else ''}; the split is not recorded")
    if report.get("empty_classes"):
        n = len(report["empty_classes"])
        print(f"warning: {n} of {len(class_index)} classes of {cfg.class_index} have no clip in split "
              f"{cfg.split!r}: they are left out of its priors and metrics (listed in {store.root / REPORT})",
              file=sys.stderr)
    return report


def _check_found(cfg: IngestConfig, segments: Segments, paths: list, label_skipped: list, issues: dict,
                 class_index: ClassIndex) -> None:
    """No clip listed (the unknown labels named), or no clip with an audio file, is an error
    naming what was tried."""
    names = ", ".join(cfg.segments)
    if not len(segments):
        unknown = issues.get("unknown_mids")
        raise InputError(f"{names}: no clip with a known label ({len(label_skipped)} rows left out)"
                         + (f"; {unknown_labels(unknown, class_index)}" if unknown else ""))
    if any(p is not None for p in paths):
        return
    ytid, start = str(segments.clip_ids[0]), float(segments.start[0])
    example = Path(cfg.audio_dir) / cfg.patterns[0].format(ytid=ytid, start=f"{start:.3f}",
                                                           start_g=f"{start:g}", ext=cfg.exts[0])
    raise InputError(f"{cfg.audio_dir}: no audio file for any of the {len(segments)} clips of {names}; "
                     f"tried patterns {' '.join(cfg.patterns)} with extensions {' '.join(cfg.exts)} "
                     f"(e.g. {example}); see --audio-pattern and --ext")


def label_warnings(report: dict, sources: str, class_index: ClassIndex) -> list[str]:
    """Warning lines on what the label files held that was left out: unknown labels (each with
    its count), repeated clip ids."""
    issues, lines = report["label_issues"], []
    if issues.get("unknown_mids"):
        without = report["skipped_by_reason"].get("unknown_mid", 0)
        lines.append(f"warning: {sources}: labels dropped from their clips: "
                     f"{unknown_labels(issues['unknown_mids'], class_index)}; {without} clip(s) left without a known "
                     f"label skipped (see {REPORT}); --unknown-labels error refuses them")
    if issues.get("duplicate_ytids"):
        repeated = issues["duplicate_ytids"]
        lines.append(f"warning: {sources}: {len(repeated)} repeated clip id(s) left out (the first kept), "
                     f"e.g. {', '.join(repeated[:5])} (see {REPORT})")
    return lines


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
    add_list(p, "--segments", default=[], metavar="CSV",
             help="segment CSV(s) of one partition (.csv or .csv.gz), with --audio-dir")
    p.add_argument("--audio-dir", metavar="DIR", help="directory with the audio files (searched recursively)")
    add_list(p, "--packs", default=[], metavar="PATH",
             help="instead of --segments and --audio-dir: packed copies of one partition, files or directories of "
                  "them: PANNs-style HDF5 (.h5, .hdf5), WebDataset-style tar shards (.tar, .tar.gz, .tgz) or "
                  "Parquet with an audio-bytes column (.parquet); see docs/your-audioset-copy.md")
    p.add_argument("--class-index", required=True, metavar="CSV",
                   help="class index CSV (index,mid,display_name): AudioSet's, or one of just your classes; an "
                        "HDF5 pack's target columns are its classes in index order")
    add_store(p, "store directory (a new store: a new or empty directory)")
    p.add_argument("--split", required=True, metavar="NAME", help="split name, e.g. train, eval_public")
    add_list(p, "--audio-pattern", default=PATTERNS, metavar="PATTERN",
             help="file names to try, in order; fields {ytid}, {start} (three decimals, 30.000), "
                  f"{{start_g}} (30), {{ext}} (default: {' '.join(PATTERNS)})")
    add_list(p, "--ext", default=EXTS, metavar="EXT",
             help=f"extensions to try for {{ext}} (default: {' '.join(EXTS)})")
    p.add_argument("--pack-format", choices=FORMATS, help="the packs' layout (default: from the file names)")
    d = PackFields()
    p.add_argument("--id-field", default=d.id, metavar="NAME",
                   help="tar .json key / Parquet column of the clip id (default %(default)s; without it: the "
                        "member's or audio path's name)")
    p.add_argument("--label-field", default=d.labels, metavar="NAME",
                   help="tar .json key / Parquet column of the labels: MIDs, class indices or 'mid1,mid2' "
                        "(default %(default)s)")
    p.add_argument("--audio-field", default=d.audio, metavar="NAME",
                   help="Parquet column of the audio, struct {bytes, path} (default %(default)s)")
    p.add_argument("--frames", type=positive_int, default=None, metavar="N",
                   help=f"keep the first N frames x 10 ms of each clip (default: the store's; a new store "
                        f"{FRAMES} = 10.24 s, AST's input): a longer clip is cut, a shorter one zero-padded at "
                        "the end of its log-mel (a 10 s clip gives 998 frames); clips under 0.1 s are skipped (too_short). Every "
                        "split of a store has the same N")
    p.add_argument("--rows-per-shard", type=positive_int, default=IngestConfig.rows_per_shard, metavar="N",
                   help="clips per shard (default %(default)s)")
    p.add_argument("--order", choices=["rarest_label", "given"],
                   help="row order (default: rarest_label for the split 'train', else the order listed: CSV "
                        "rows, or pack order)")
    p.add_argument("--unknown-labels", choices=UNKNOWN_LABELS, default="drop",
                   help="a label not in the class index (a misspelt MID): drop it from its clip, named with its "
                        "count in a warning (a clip left without labels is skipped), or refuse the input "
                        "(default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    return run(_main, p, argv)


def _main(a) -> int:
    cfg = IngestConfig(a.segments, a.class_index, a.audio_dir, a.store, a.split, tuple(a.audio_pattern), tuple(a.ext),
                       a.frames, a.rows_per_shard, a.order, a.unknown_labels, tuple(a.packs), a.pack_format,
                       PackFields(a.id_field, a.label_field, a.audio_field))
    try:
        report = ingest(cfg)
    except KeyboardInterrupt:
        print(f"interrupted: {a.store} keeps what was finished (journaled); run the same command again to resume",
              file=sys.stderr)
        return 130
    print(json.dumps(summary(report), indent=1) if a.json else format_summary(report, a.store))
    for line in label_warnings(report, ", ".join(a.segments or a.packs), read_class_index(a.class_index)):
        print(line, file=sys.stderr)
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
