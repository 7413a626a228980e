"""Columnar layouts that cross into `engine_rs`, and helpers to build them from Python values.

Bulk data never crosses the boundary as lists of Python objects: numbers are numpy arrays,
strings are Arrow-style string columns, a pair `(data, offsets)` where `data` is a uint8
array of UTF-8 bytes and `offsets` an int64 array of n+1 ascending positions.

The dicts of columns the engine reads are declared once, as TypedDicts in `engine_rs.pyi`
(`CatalogItems`, `CatalogMappings`, `FeeLines`, `BatchFeeLines`, `VisitColumns`,
`SettlementColumns`), so mypy checks every dict a caller builds; what each key means is
commented there. Line columns are borrowed, not copied, for the length of a call: do not
write to them from another thread while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import numpy.typing as npt

StrColumn = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]

CNT_SCALE = 10_000


def pack_strings(values: Sequence[str]) -> StrColumn:
    """Pack Python strings into an Arrow-style (data, offsets) column."""
    encoded = [v.encode("utf-8") for v in values]
    # fromiter over a running sum: cheaper than np.cumsum for the few strings of one call.
    offsets = np.fromiter(
        accumulate(map(len, encoded), initial=0), dtype=np.int64, count=len(encoded) + 1
    )
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return data, offsets


def unpack_strings(col: StrColumn) -> list[str]:
    """The inverse of `pack_strings` (for tests and small data)."""
    data, offsets = col
    raw = data.tobytes()
    return [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def take_strings(col: StrColumn, index: npt.NDArray[np.int64]) -> StrColumn:
    """Rows `index` of a string column, gathered without leaving numpy."""
    data, offsets = col
    lengths = np.diff(offsets)[index]
    new_offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    starts = offsets[:-1][index]
    within = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(new_offsets[:-1], lengths)
    return data[np.repeat(starts, lengths) + within], new_offsets


def numbered_codes(prefix: str, n: int, width: int = 8) -> StrColumn:
    """`prefix` + a zero-padded number for 0..n-1, built in numpy (bulk test data)."""
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    digits = np.arange(n, dtype=np.int64)[:, None] // (10 ** np.arange(width - 1, -1, -1)) % 10
    rows = np.hstack([np.broadcast_to(head, (n, len(head))), (digits + ord("0")).astype(np.uint8)])
    offsets = np.arange(n + 1, dtype=np.int64) * rows.shape[1]
    return np.ascontiguousarray(rows).reshape(-1), offsets
