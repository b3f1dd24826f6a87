"""AudioSet label files: the class index CSV and the segment CSVs.

Formats (the public Google release):
  class_labels_indices.csv   header `index,mid,display_name`, one class a row, index order.
  *_segments.csv[.gz]        `#` header lines (3 in the originals, 1 in some copies), then
                             `YTID, start_seconds, end_seconds, "mid1,mid2,..."`.
Several segment files read together are one partition (balanced + unbalanced train = the
paper's "published train"). Unknown MIDs and duplicate YTIDs are errors that name them.
A file that cannot be read as such (a truncated or corrupt .gz, text that is not UTF-8, a row
that does not parse) is a LabelFileError naming the file and, where known, the line.
"""
from __future__ import annotations

import csv
import gzip
import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data.cli import InputError
from data.balance import MultiLabels

__all__ = ["ClassIndex", "Segments", "LabelIssues", "LabelFileError", "read_class_index", "read_segments",
           "unknown_labels"]


class LabelFileError(InputError):
    """A label file that cannot be used as it is; the message names the file and the rows."""


@dataclass(frozen=True)
class ClassIndex:
    """Classes in index order: `mids[i]`, `names[i]` for class i."""

    mids: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.mids)


@dataclass(frozen=True)
class Segments:
    """One partition: clip ids, segment times (seconds) and label indices, in file order."""

    clip_ids: np.ndarray  # str [n_clips]
    start: np.ndarray     # float64 [n_clips]
    end: np.ndarray       # float64 [n_clips]
    labels: MultiLabels   # [n_clips] -> class indices
    sources: list[str]    # the files read

    def __len__(self) -> int:
        return len(self.clip_ids)


def read_class_index(path: str | Path) -> ClassIndex:
    """Parse `class_labels_indices.csv` (index, mid, display_name); indices must be 0..K-1."""
    path = Path(path)
    try:
        rows = list(csv.reader(io.StringIO(_read_text(path), newline="")))
    except csv.Error as e:
        raise LabelFileError(f"{path}: not a CSV file ({e})") from None
    if not rows or [c.strip() for c in rows[0][:3]] != ["index", "mid", "display_name"]:
        raise LabelFileError(f"{path}: expected header 'index,mid,display_name', got {rows[:1]}")
    mids, names = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 3:
            raise LabelFileError(f"{path}:{line}: expected 3 fields, got {row}")
        if not row[0].strip().isdigit():
            raise LabelFileError(f"{path}:{line}: index {row[0]!r} is not a number")
        if int(row[0]) != len(mids):
            raise LabelFileError(f"{path}:{line}: index {row[0]} out of order (expected {len(mids)})")
        mids.append(row[1].strip())
        names.append(row[2].strip())
    dup = _duplicates(np.array(mids))
    if dup:
        raise LabelFileError(f"{path}: duplicate MIDs {dup}")
    return ClassIndex(mids, names)


def _read_text(path: Path) -> str:
    """A label file's text (gunzipped for .gz, without a leading BOM); a truncated or corrupt .gz or bytes that are
    not UTF-8 are a LabelFileError naming the file (and the line of the first bad byte)."""
    with open(path, "rb") as f:  # a missing file: FileNotFoundError, which names it
        raw = f.read()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise LabelFileError(f"{path}: truncated gzip file (its {len(raw):,} bytes end before the "
                                 "end-of-stream marker); download or copy it again") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise LabelFileError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a BOM (spreadsheets write one) is no text
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        of = " of the uncompressed text" if path.suffix == ".gz" else ""
        raise LabelFileError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                             f"{e.start:,}{of})") from None


def _bad_row(body: str, first_line: int) -> str:
    """Where a segment CSV body first breaks the `YTID, start, end, "labels"` form: "LINE (row)",
    or "" if the Python csv module finds nothing wrong."""
    for k, row in enumerate(csv.reader(io.StringIO(body, newline=""), skipinitialspace=True)):
        ok = len(row) == 4
        if ok:
            try:
                float(row[1]), float(row[2])
            except ValueError:
                ok = False
        if not ok and row:
            return f"{first_line + k} ({','.join(row)[:80]!r})"
    return ""


def _duplicates(values: np.ndarray, shown: int = 5) -> list[str]:
    uniq, counts = np.unique(values, return_counts=True)
    return [str(v) for v in uniq[counts > 1][:shown]] if (counts > 1).any() else []


def _parse_file(path: Path) -> pa.Table:
    """One segment CSV as a table (ytid, start, end, mids: list<string>); `#` lines skipped."""
    text = _read_text(path)
    pos = 0  # `#` header lines only ever lead the file
    while text.startswith("#", pos):
        pos = text.find("\n", pos) + 1 or len(text)
    opts = pacsv.ReadOptions(column_names=["ytid", "start", "end", "mids"])
    parse = pacsv.ParseOptions(delimiter=",", quote_char='"')
    types = pacsv.ConvertOptions(column_types={"ytid": pa.string(), "start": pa.float64(),
                                               "end": pa.float64(), "mids": pa.string()})
    body = text[pos:].replace(", ", ",").encode()  # originals separate with ", ", copies with ","
    try:
        table = pacsv.read_csv(pa.py_buffer(body), opts, parse, types)
    except pa.ArrowInvalid as e:
        where = _bad_row(text[pos:], text.count("\n", 0, pos) + 1)
        raise LabelFileError(f"{path}{':' + where if where else ''}: not 'YTID, start, end, \"labels\"' "
                             f"({e})") from None
    mids = pc.split_pattern(pc.utf8_trim(table["mids"], characters='" '), ",")
    return table.set_column(3, "mids", mids)


def unknown_labels(counts: dict[str, int], class_index: ClassIndex, shown: int = 5) -> str:
    """'N unknown label(s): a (3x), b (1x)' (the `shown` most frequent), saying so where they are
    display names of `class_index` (label files list MIDs)."""
    order = sorted(counts, key=lambda label: (-counts[label], label))
    text = f"{len(counts)} unknown label(s): " + ", ".join(f"{label} ({counts[label]}x)" for label in order[:shown])
    text += ", ..." if len(order) > shown else ""
    mid_of = dict(zip(class_index.names, class_index.mids))
    names = [label for label in order if label in mid_of]
    if names:
        text += (f"; {len(names)} of them are display names of the class index, where the label files list MIDs "
                 f"({names[0]} is {mid_of[names[0]]})")
    return text


@dataclass(frozen=True)
class LabelIssues:
    """What a lenient read left out: unknown MIDs (with their label counts), repeated YTIDs
    (rows after the first), clips whose every MID was unknown, and clips with an empty label list."""

    unknown_mids: dict[str, int]
    duplicate_ytids: list[str]
    unlabelled: list[str]
    no_labels: list[str]

    def __bool__(self) -> bool:
        return bool(self.unknown_mids or self.duplicate_ytids or self.unlabelled or self.no_labels)


def _repeated_labels(clip_of_label: np.ndarray, indices: np.ndarray, known: np.ndarray, n_classes: int) -> np.ndarray:
    """Bool [labels]: a known label that its clip already listed (every occurrence after the first)."""
    key = np.where(known, clip_of_label * n_classes + np.where(known, indices, 0).astype(np.int64), -1)
    order = np.argsort(key, kind="stable")
    again = np.zeros(len(key), dtype=bool)
    again[order[1:]] = (key[order[1:]] == key[order[:-1]]) & (key[order[1:]] >= 0)
    return again


def read_segments(paths, class_index: ClassIndex, strict: bool = True):
    """Parse one or more segment CSVs (optionally .gz) into one partition.

    strict: unknown MIDs, duplicate YTIDs and empty label lists raise LabelFileError naming
    them (counts, first few). Not strict (ingest): unknown MIDs are dropped, a repeated YTID
    keeps its first row, clips left without labels are dropped, and `(Segments, LabelIssues)` is
    returned. Either way a label listed twice for one clip counts once, with a warning naming
    the clips, and empty items of a list ("a,,b") are no labels.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    names = ", ".join(str(p) for p in paths)
    table = pa.concat_tables([_parse_file(p) for p in paths])
    mids = table["mids"].combine_chunks()
    flat = pc.utf8_trim_whitespace(mids.flatten())
    indices = pc.index_in(flat, value_set=pa.array(class_index.mids)).to_numpy(zero_copy_only=False)
    known = ~np.isnan(indices) if indices.dtype.kind == "f" else indices >= 0
    blank = pc.equal(flat, "").to_numpy(zero_copy_only=False)
    unknown, unknown_counts = np.unique(flat.to_numpy(zero_copy_only=False)[~known & ~blank], return_counts=True)
    if strict and len(unknown):
        described = unknown_labels(dict(zip(unknown.tolist(), unknown_counts.tolist())), class_index)
        raise LabelFileError(f"{names}: {described}, not in the class index")
    ytid = pc.utf8_trim_whitespace(table["ytid"]).combine_chunks().to_numpy(zero_copy_only=False).astype(str)
    _, first = np.unique(ytid, return_index=True)
    if strict and len(first) != len(ytid):
        dup = _duplicates(ytid)
        raise LabelFileError(f"{names}: {len(ytid) - len(first)} duplicate YTID row(s), e.g. {', '.join(dup)}")
    offsets = mids.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    clip_of_label = np.repeat(np.arange(len(ytid)), np.diff(offsets))
    repeated = _repeated_labels(clip_of_label, indices, known, len(class_index))
    if repeated.any():  # a class listed twice for one clip counts once
        known &= ~repeated
        clips = np.unique(clip_of_label[repeated])
        warnings.warn(f"{names}: {len(clips)} clip(s) list a label more than once, counted once "
                      f"(e.g. {', '.join(ytid[clips[:5]])})", stacklevel=2)
    kept_labels = np.bincount(clip_of_label[known], minlength=len(ytid))
    n_listed = np.bincount(clip_of_label[~blank], minlength=len(ytid))  # labels other than ""
    if strict and (n_listed == 0).any():
        empty = ytid[n_listed == 0]
        raise LabelFileError(f"{names}: {len(empty)} clip(s) with an empty label list: {', '.join(empty[:5])}")
    is_first = np.zeros(len(ytid), dtype=bool)
    is_first[first] = True
    keep = is_first & (kept_labels > 0)
    label_rows = keep[clip_of_label] & known
    new_offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(kept_labels[keep], out=new_offsets[1:])
    segments = Segments(ytid[keep], table["start"].to_numpy()[keep], table["end"].to_numpy()[keep],
                        MultiLabels(new_offsets, indices[label_rows].astype(np.int64)), [str(p) for p in paths])
    if strict:
        return segments
    no_known = is_first & (kept_labels == 0)
    issues = LabelIssues(dict(zip(unknown.tolist(), unknown_counts.tolist())), ytid[~is_first].tolist(),
                         ytid[no_known & (n_listed > 0)].tolist(), ytid[no_known & (n_listed == 0)].tolist())
    return segments, issues
