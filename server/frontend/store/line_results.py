"""How a settlement keeps its per-line results: one blob in `settlements.line_results`, not a
row per line (a row per line made a 10-line settle write eleven B-tree entries).

Layout (little-endian): the line count n (u32); n rows of eight int64 (`INT_FIELDS`); then
the feedetl_sn and the med_list_codg of each line as u16 byte lengths (2n of them, all the
feedetl_sn first) followed by their UTF-8 bytes in the same order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

INT_FIELDS = (
    "chrgitm_lv",
    "med_chrgitm_type",
    "det_item_fee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "flags",
)

_INTS = np.dtype("<i8")
_LENS = np.dtype("<u2")


def encode(sns: Sequence[str], codes: Sequence[str], ints: npt.NDArray[np.int64]) -> bytes:
    """`ints` is (n, 8) in `INT_FIELDS` order."""
    n = len(sns)
    if ints.shape != (n, len(INT_FIELDS)) or len(codes) != n:
        raise ValueError("line result columns differ in length")
    text = [s.encode("utf-8") for s in sns] + [c.encode("utf-8") for c in codes]
    lens = np.fromiter(map(len, text), dtype=_LENS, count=2 * n)
    return b"".join(
        (struct.pack("<I", n), ints.astype(_INTS, copy=False).tobytes(), lens.tobytes(), *text)
    )


def decode(blob: bytes) -> list[tuple[Any, ...]]:
    """Each line as (feedetl_sn, med_list_codg, *INT_FIELDS)."""
    (n,) = struct.unpack_from("<I", blob)
    at = 4
    ints = np.frombuffer(blob, dtype=_INTS, count=n * len(INT_FIELDS), offset=at)
    at += ints.nbytes
    lens = np.frombuffer(blob, dtype=_LENS, count=2 * n, offset=at).tolist()
    at += 2 * 2 * n
    text: list[str] = []
    for k in lens:
        text.append(blob[at : at + k].decode("utf-8"))
        at += k
    if at != len(blob):
        raise ValueError(f"line results blob: {len(blob) - at} bytes left over")
    rows = ints.reshape(n, len(INT_FIELDS)).tolist()
    return [(text[i], text[n + i], *rows[i]) for i in range(n)]
