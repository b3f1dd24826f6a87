"""Packed copies of AudioSet, read clip by clip: each part of a pack from its start to its end.

Three layouts (`FORMATS`), told apart by the files' suffixes (or `--pack-format`):

  hdf5     PANNs-style (.h5, .hdf5): `audio_name` [clips] (bytes, e.g. b"Y--PJHxphWEs.wav"),
           `waveform` int16 [clips, samples], `target` bool [clips, classes] whose columns are the
           class index's classes in index order; the sample rate is the file's `sample_rate`
           attribute, else 32 kHz. Samples are int16 / 32767 (the scale PANNs packs with), and the
           zeros PANNs pads each clip with to the pack's length are cut before the features: a
           clip gives the frames it has, as its own file would.
  tar      WebDataset-style shards (.tar, .tar.gz, .tgz): the members that share a key (the member
           name up to the first dot of its base name) are one clip, an audio file (`AUDIO_EXTS`)
           and a .json of labels. Read with `tarfile` in stream mode, start to end, never seeking.
  parquet  Hugging Face `datasets`-style (.parquet): an audio column of struct {bytes, path} (the
           encoded file), a labels column, an id column.

Labels (the JSON key or column `labels`, `PackFields`): MIDs of the class index, class indices
(integers), or one "mid1,mid2" string as in a segment CSV. Integers that Hugging Face metadata
declares as ClassLabel values are first mapped to their class names. Clip ids: the `video_id`
field where a clip has one, else its name (the tar key's base name, the audio path's stem, the
HDF5 audio_name less its extension), with PANNs' "Y" before an 11-character YTID removed.

A pack is split into parts (`PackPart`): a whole tar, or runs of rows (HDF5) or row groups
(Parquet); one task reads one part. A part that cannot be read to its end (a tar cut short, a
Parquet row group that does not decode) yields the clip it stopped in with the reason
("truncated", "unreadable") and the file named; the clips before it are kept.
"""
from __future__ import annotations

import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from data.cli import InputError
from data.features import AudioError, clip_log_mel, log_mel

__all__ = ["FORMATS", "AUDIO_EXTS", "PANNS_RATE", "PANNS_SCALE", "PackFields", "PackPart", "PackClip",
           "pack_parts", "read_part", "resolve_labels", "clip_id_of", "pack_log_mel"]

FORMATS = ("hdf5", "tar", "parquet")
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".tar": "tar", ".tgz": "tar", ".tar.gz": "tar", ".parquet": "parquet"}
AUDIO_EXTS = ("flac", "wav", "ogg", "mp3", "opus")
PANNS_RATE = 32000      # Hz, an HDF5 pack without a `sample_rate` attribute
PANNS_SCALE = 32767.0   # PANNs packs float samples as round-toward-zero(x * 32767)
_READ_ROWS = 16         # HDF5 rows / Parquet rows read at once
_PANNS_NAME = re.compile(r"Y[A-Za-z0-9_-]{11}")


@dataclass(frozen=True)
class PackFields:
    """Names of the fields a clip's data is under: the JSON keys of a tar's .json member, or the
    columns of a Parquet file (the audio column: Parquet only)."""

    id: str = "video_id"
    labels: str = "labels"
    audio: str = "audio"


@dataclass(frozen=True)
class PackPart:
    """What one task reads, start to end: a whole tar, rows [start, stop) of an HDF5 pack, or
    row groups [start, stop) of a Parquet file. `clips`: the clips it holds, None for a tar
    (unknown until read); `size`, `mtime_ns`: the file's, so that a changed file is read again."""

    path: str
    format: str
    start: int
    stop: int
    clips: int | None
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class PackClip:
    """One clip as a pack holds it: its id, its labels as stored (see `resolve_labels`), its audio
    (an encoded file's bytes, or int16 samples [samples] at `rate` Hz), or the `problem`
    (reason, detail) that stopped it from being read."""

    clip_id: str
    labels: object = None
    audio: bytes | np.ndarray | None = None
    rate: int = 0
    problem: tuple[str, str] | None = None


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((f for s, f in SUFFIXES.items() if name.endswith(s)), None)


def _pack_files(paths, fmt: str | None) -> tuple[list[Path], str]:
    """The pack files (a directory: its files of the format, recursively, sorted) and their one format."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _format_of(f) in ((fmt,) if fmt else FORMATS))
            if not found:
                raise InputError(f"{p}: no pack file in it ({', '.join(SUFFIXES)})")
            files += found
        elif not p.is_file():
            raise FileNotFoundError(2, "no such pack file", str(p))
        else:
            files.append(p)
    formats = {fmt or _format_of(f) for f in files}
    if None in formats:
        bad = next(f for f in files if _format_of(f) is None)
        raise InputError(f"{bad}: not a pack file by its name ({', '.join(SUFFIXES)}); name the layout with --pack-format")
    if len(formats) > 1:
        raise InputError(f"{', '.join(map(str, paths))}: packs of several layouts ({', '.join(sorted(formats))}): "
                         "ingest one layout at a time")
    return files, formats.pop()


def pack_parts(paths, fmt: str | None, fields: PackFields, n_classes: int, rows: int) -> list[PackPart]:
    """The parts of the packs at `paths` (files, or directories of them) in order, each part at
    most `rows` clips (a tar: whole). Each file is opened and checked first: the layout's
    datasets or columns, and an HDF5 target as wide as the class index (`n_classes`); a file
    that does not fit is an InputError naming it and what is wrong."""
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"pack format {fmt!r} is not one of {', '.join(FORMATS)}")
    files, fmt = _pack_files(paths, fmt)
    parts = []
    for f in files:
        if fmt == "tar":
            runs = [(0, 0, None)]
        elif fmt == "hdf5":
            n = _hdf5_clips(f, n_classes)
            runs = [(a, min(a + rows, n), min(rows, n - a)) for a in range(0, n, rows)]
        else:
            runs = _row_group_runs(_parquet_groups(f, fields), rows)
        stat = f.stat()
        parts += [PackPart(str(f), fmt, a, b, clips, stat.st_size, stat.st_mtime_ns) for a, b, clips in runs]
    if not parts:
        raise InputError(f"{', '.join(map(str, paths))}: no clip in the packs")
    return parts


def _row_group_runs(sizes: list[int], rows: int) -> list[tuple[int, int, int]]:
    """(first, stop, clips) of runs of consecutive row groups (of `sizes` rows) of at most `rows`
    clips (a larger row group is a run by itself)."""
    runs, start, clips = [], 0, 0
    for g, size in enumerate(sizes):
        if clips and clips + size > rows:
            runs.append((start, g, clips))
            start, clips = g, 0
        clips += size
    return runs + ([(start, len(sizes), clips)] if clips else [])


def _hdf5_clips(path: Path, n_classes: int) -> int:
    """Clips of a PANNs-style HDF5 pack, its layout checked (InputError naming what is wrong)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("audio_name", "waveform", "target") if k not in f]
            if missing:
                raise InputError(f"{path}: not a PANNs-style HDF5 pack (no {', '.join(missing)}; it has "
                                 f"{', '.join(f.keys()) or 'nothing'})")
            wave, target, names = f["waveform"], f["target"], f["audio_name"]
            if wave.ndim != 2 or wave.dtype != np.int16:
                raise InputError(f"{path}: waveform is {wave.dtype} {wave.shape}, not int16 [clips, samples]")
            if target.ndim != 2 or target.shape[1] != n_classes:
                raise InputError(f"{path}: target is {target.shape}, not [clips, {n_classes}] (the class index's "
                                 "classes)")
            if not len(names) == len(wave) == len(target):
                raise InputError(f"{path}: {len(names)} audio_name, {len(wave)} waveform, {len(target)} target rows")
            return len(wave)
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({e})") from None


def _parquet_groups(path: Path, fields: PackFields) -> list[int]:
    """Rows of each row group of a Parquet pack, its columns checked (InputError naming what is wrong)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    schema = pf.schema_arrow
    audio = schema.field(fields.audio).type if fields.audio in schema.names else None
    if audio is None or not pa.types.is_struct(audio) or audio.get_field_index("bytes") < 0:
        raise InputError(f"{path}: no audio column {fields.audio!r} of struct {{bytes, path}} (columns: "
                         f"{', '.join(schema.names)}); see --audio-field")
    if fields.labels not in schema.names:
        raise InputError(f"{path}: no labels column {fields.labels!r} (columns: {', '.join(schema.names)}); "
                         "see --label-field")
    meta = pf.metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def clip_id_of(name: str) -> str:
    """A clip id from a file or member name: its base name up to the first dot, less PANNs' "Y"
    before an 11-character YTID ("bal/Y--PJHxphWEs.wav" -> "--PJHxphWEs")."""
    stem = PurePosixPath(name).name.split(".", 1)[0]
    return stem[1:] if _PANNS_NAME.fullmatch(stem) else stem


def resolve_labels(raw, index_of: dict[str, int], n_classes: int) -> tuple[list[int], list[str]]:
    """A clip's labels as a pack holds them -> (class indices, sorted, each once; the labels not
    in the class index, as text). `raw`: MIDs (`index_of` maps them to indices), class indices
    0..n_classes-1, or one "mid1,mid2" string; None, "" and empty items are no label."""
    if raw is None:
        items = []
    elif isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, (int, np.integer)):
        items = [raw]
    else:
        items = list(raw)
    found, unknown = set(), []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
            k = index_of.get(item)
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            k = int(item) if 0 <= item < n_classes else None
        else:
            k = None
        if k is None:
            unknown.append(str(item))
        else:
            found.add(k)
    return sorted(found), unknown


def read_part(part: PackPart, fields: PackFields) -> Iterator[PackClip]:
    """The clips of a part in pack order (see the module docstring for each layout)."""
    reader = {"hdf5": _hdf5_part, "tar": _tar_part, "parquet": _parquet_part}[part.format]
    yield from reader(part, fields)


def _hdf5_part(part: PackPart, fields: PackFields) -> Iterator[PackClip]:
    import h5py
    with h5py.File(part.path, "r") as f:
        rate = int(f.attrs.get("sample_rate", PANNS_RATE))
        for a in range(part.start, part.stop, _READ_ROWS):
            b = min(a + _READ_ROWS, part.stop)
            names, waves, targets = f["audio_name"][a:b], f["waveform"][a:b], f["target"][a:b]
            for name, wave, target in zip(names, waves, targets):
                name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                nonzero = np.flatnonzero(wave)
                yield PackClip(clip_id_of(name), np.flatnonzero(target).tolist(),
                               wave[:nonzero[-1] + 1] if len(nonzero) else wave[:0], rate)


def _split_member(name: str) -> tuple[str, str]:
    """A tar member's (key, extension): the name up to / after the first dot of its base name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _tar_part(part: PackPart, fields: PackFields) -> Iterator[PackClip]:
    """A tar read in stream mode: clips as their members arrive; a read that fails (a member cut
    short, a damaged .gz) or an archive without its end-of-archive block ends the part with the
    clip it was in, "truncated"."""
    key, members, member = None, {}, None
    with open(part.path, "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name, ext = _split_member(member.name)
                    if key is not None and name != key:
                        yield _tar_clip(part.path, key, members, fields)
                        members = {}
                    key = name
                    if ext == "json" or ext.rsplit(".", 1)[-1] in AUDIO_EXTS:
                        members[ext] = tar.extractfile(member).read()
                ended = tar.fileobj.tell() - tar.offset >= tarfile.BLOCKSIZE  # an end-of-archive block was read
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            where = f"ends inside {member.name}" if member is not None else "cannot be read"
            yield PackClip(clip_id_of(key or part.path), problem=("truncated", f"{part.path}: {where} ({e})"))
            return
    if key is not None and not ended:
        yield PackClip(clip_id_of(key), problem=("truncated", f"{part.path}: ends after {member.name} without the "
                                                              "end-of-archive block: cut short"))
    elif key is not None:
        yield _tar_clip(part.path, key, members, fields)


def _tar_clip(path: str, key: str, members: dict[str, bytes], fields: PackFields) -> PackClip:
    """The clip of one key's members: its .json's labels (and id), its audio member's bytes."""
    audio = [members[e] for e in members if e.rsplit(".", 1)[-1] in AUDIO_EXTS]
    clip_id, where = clip_id_of(key), f"{path}: {key}"
    if "json" not in members:
        return PackClip(clip_id, problem=("no_labels", f"{where}: no .json member"))
    try:
        meta = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return PackClip(clip_id, problem=("unreadable", f"{where}.json: not JSON ({e})"))
    if isinstance(meta, dict):
        clip_id = str(meta.get(fields.id) or clip_id)
        labels = meta.get(fields.labels)
    else:
        labels = meta
    if not audio:
        return PackClip(clip_id, problem=("missing", f"{where}: no audio member ({', '.join(AUDIO_EXTS)})"))
    return PackClip(clip_id, labels, audio[0])


def _class_names(schema, field: str) -> list[str] | None:
    """The ClassLabel names that Hugging Face metadata declares for column `field`, if any."""
    try:
        feature = json.loads(schema.metadata[b"huggingface"])["info"]["features"][field]
    except (KeyError, TypeError, ValueError):
        return None
    while isinstance(feature, dict) and "names" not in feature and "feature" in feature:
        feature = feature["feature"]
    names = feature.get("names") if isinstance(feature, dict) else None
    return names if isinstance(names, list) else None


def _parquet_part(part: PackPart, fields: PackFields) -> Iterator[PackClip]:
    """Rows of a Parquet part, a few at a time; a row group that does not decode ends the part."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(part.path)
    names = _class_names(pf.schema_arrow, fields.labels)
    columns = [c for c in (fields.id, fields.labels, fields.audio) if c in pf.schema_arrow.names]
    row = sum(pf.metadata.row_group(g).num_rows for g in range(part.start))
    try:
        for batch in pf.iter_batches(_READ_ROWS, row_groups=list(range(part.start, part.stop)), columns=columns):
            for record in batch.to_pylist():
                yield _parquet_clip(part.path, row, record, fields, names)
                row += 1
    except (OSError, pa.ArrowException) as e:
        yield PackClip(f"{Path(part.path).name}@{row}", problem=("unreadable", f"{part.path}: row {row} and on "
                                                                              f"do not decode ({e})"))


def _parquet_clip(path: str, row: int, record: dict, fields: PackFields, names: list[str] | None) -> PackClip:
    audio = record.get(fields.audio) or {}
    clip_id = record.get(fields.id) or clip_id_of(audio.get("path") or f"{Path(path).name}@{row}")
    labels = record.get(fields.labels)
    if names is not None and isinstance(labels, (int, list)):  # ClassLabel values: the dataset's own classes
        labels = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v
                  for v in (labels if isinstance(labels, list) else [labels])]
    if not audio.get("bytes"):
        return PackClip(str(clip_id), problem=("missing", f"{path}: row {row}: no audio bytes "
                                                          f"(path {audio.get('path')!r})"))
    return PackClip(str(clip_id), labels, audio["bytes"])


def pack_log_mel(clip: PackClip, frames: int, name: str) -> tuple[np.ndarray, int]:
    """A pack clip's (log-mel float32 [frames, mels], valid frames), as data/features.py computes
    them from a file; `name` names the clip in errors. Raises AudioError."""
    if isinstance(clip.audio, np.ndarray):
        if not len(clip.audio):
            raise AudioError("empty", f"{name}: every sample is zero")
        return log_mel(clip.audio.astype(np.float32) / PANNS_SCALE, clip.rate, frames, name)
    return clip_log_mel(clip.audio, frames, name)
