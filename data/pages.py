"""Format-2 spectrogram pages read straight from a shard: the stream's read at the speed of the bytes.

A format-2 shard (data/manifest.py) stores each row group's spectrograms as one Parquet data
page: a Thrift header, then the rows' float16 bytes back to back (PLAIN, uncompressed, no
levels: the column is required), with the page's CRC-32 in the header. `SpectrogramPages`
finds each group's page from the footer; `read_group` reads a page with one scatter `os.preadv`:
the header into a reusable buffer and each row's bytes straight into the array that row goes to
(rows no one asked for into the buffer), then checks the header (one uncompressed data page of
exactly those rows) and the CRC-32 of the values (the checksum Parquet defines, zlib's, computed
by ISA-L at about 3x zlib's speed, row after row). A spectrogram is copied once, file to its
place in the block, instead of three times through pyarrow (its read buffer, the decoded
column, then into place). A page laid out otherwise (a format-1 shard, a writer that splits
pages) is not read here: the caller reads it through pyarrow, which checks the same CRC.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from isal import isal_zlib

from data.manifest import SPECTROGRAM, StoreError

__all__ = ["SpectrogramPages", "read_group"]

_I32, _STRUCT = 5, 12  # Thrift compact protocol type ids
_HEADER_MAX = 256      # bytes a page header of this layout takes at most
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one preadv fills
_buffers = threading.local()


@dataclass(frozen=True)
class SpectrogramPages:
    """Where each row group's spectrogram page lies in one shard: offset and size of the page
    (header + values), int64 [G], and rows, int64 [G]; `of` gives None unless every group's
    spectrogram column chunk is a single uncompressed PLAIN page without a dictionary."""

    path: str
    offset: np.ndarray
    size: np.ndarray
    rows: np.ndarray
    width: int          # bytes a spectrogram

    @classmethod
    def of(cls, path: str, pf: pq.ParquetFile, width: int) -> "SpectrogramPages | None":
        meta = pf.metadata
        column = pf.schema_arrow.get_field_index(SPECTROGRAM)
        offset, size, rows = [], [], []
        for g in range(meta.num_row_groups):
            chunk, n = meta.row_group(g).column(column), meta.row_group(g).num_rows
            header = chunk.total_compressed_size - n * width
            if (chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page or "PLAIN" not in chunk.encodings
                    or not 0 < header <= _HEADER_MAX):
                return None
            offset.append(chunk.data_page_offset)
            size.append(chunk.total_compressed_size)
            rows.append(n)
        return cls(path, *(np.asarray(v, np.int64) for v in (offset, size, rows)), width)


def _varint(data, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at `pos`: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _i32_fields(data, pos: int, count: int) -> tuple[dict[int, int], int]:
    """The first `count` fields of a Thrift compact struct at `pos`, if they are i32 fields with
    ids given as deltas ({id: value}, position after them); stops early at anything else."""
    fields, field = {}, 0
    while len(fields) < count and pos < len(data):
        delta, kind = data[pos] >> 4, data[pos] & 0x0F
        if not delta or kind != _I32:
            break
        value, pos = _varint(data, pos + 1)
        field += delta
        fields[field] = (value >> 1) ^ -(value & 1)  # zigzag
    return fields, pos


def _page_crc(header: memoryview, rows: int, values: int) -> int | None:
    """The CRC-32 a page header records, if it is the header of one uncompressed PLAIN data page
    of `rows` values and `values` bytes (else None): PageHeader fields 1-4 (type, sizes, crc)
    and its data_page_header's num_values and encoding."""
    try:
        return _parsed_crc(header, rows, values)
    except IndexError:  # a header cut short (damaged)
        return None


def _parsed_crc(header: memoryview, rows: int, values: int) -> int | None:
    top, pos = _i32_fields(header, 0, 4)
    if 4 not in top or top != {1: 0, 2: values, 3: values, 4: top[4]} or pos >= len(header):
        return None
    if header[pos] != (1 << 4 | _STRUCT):  # field 5, the data page header
        return None
    page, _ = _i32_fields(header, pos + 1, 2)
    return top[4] & 0xFFFFFFFF if page == {1: rows, 2: 0} else None


def _buffer(size: int) -> np.ndarray:
    """This thread's read buffer, at least `size` bytes (kept: pages are read into it again and
    again without new pages of memory)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _buffers.buf = np.empty(size, np.uint8)
    return buf


def read_group(pages: SpectrogramPages, fd: int, g: int, into: list[np.ndarray | None]) -> bool:
    """Row group g's spectrograms read straight into place: row r's bytes into `into[r]` (a
    writable, C-contiguous float16 [frames, mels]) or, where it is None, into this thread's
    buffer, there only for the page's CRC-32 (one scatter `preadv`: no copy after the read).
    False if the page is not laid out as expected (`into` may then be partly written). A CRC-32
    that does not match, or a short read, is a StoreError naming the shard and the row group."""
    size, rows, width = int(pages.size[g]), int(pages.rows[g]), pages.width
    header = size - rows * width
    buf = memoryview(_buffer(size))
    values = [memoryview(into[r]).cast("B") if into[r] is not None else buf[header + r * width:header + (r + 1) * width]
              for r in range(rows)]
    parts, got = [buf[:header], *values], 0
    for i in range(0, len(parts), _IOV_MAX):
        got += os.preadv(fd, parts[i:i + _IOV_MAX], int(pages.offset[g]) + got)
    if got != size:
        raise StoreError(f"{pages.path}: row group {g} is unreadable (the file ends inside its spectrogram page)")
    crc = _page_crc(buf[:header], rows, rows * width)
    if crc is None:
        return False
    computed = 0
    for v in values:
        computed = isal_zlib.crc32(v, computed)
    if computed != crc:
        raise StoreError(f"{pages.path}: row group {g} is unreadable (CRC-32 of its spectrogram page does not "
                         "match: damaged bytes)")
    return True
