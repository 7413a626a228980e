"""Columnar layouts that cross into `engine_rs`, and helpers to build them from Python values.

Bulk data never crosses the boundary as lists of Python objects: numbers are numpy arrays,
strings are Arrow-style string columns, a pair `(data, offsets)` where `data` is a uint8
array of UTF-8 bytes and `offsets` an int64 array of n+1 ascending positions.

Catalog items (`engine_rs.Catalog.load(items, mappings, ...)`), one row per insurance item:

| key              | dtype        | meaning                                                  |
|------------------|--------------|----------------------------------------------------------|
| code             | str column   | national insurance code (`med_list_codg`), unique        |
| name             | str column   | registered name (通用名 / 项目名称)                       |
| spec             | str column   | specification (规格), may be empty                        |
| dosage_form      | str column   | dosage form (剂型), may be empty                          |
| manufacturer     | str column   | manufacturer (生产企业), may be empty                     |
| kind             | uint8        | 1 western med, 2 Chinese patent med, 3 herbal pieces,    |
|                  |              | 4 hospital preparation, 5 medical service, 6 material    |
| chrgitm_lv       | uint8        | 1 class A (甲), 2 class B (乙), 3 class C (丙)            |
| fee_category     | uint8        | med_chrgitm_type 1..14 (bed .. other)                    |
| price_cap        | int64        | price cap per unit in fen (限价); 0 = none                |
| selfpay_prop_bp  | int32 (n, k) | pre-self-pay ratio in basis points; column 0 is the      |
|                  |              | default, column j>0 applies to psn_type selfpay_psn_types[j-1] |
| inpatient_only   | bool         | restricted to inpatients                                 |
| sex              | uint8        | 0 any, 1 male, 2 female                                  |
| age_min, age_max | uint8        | inclusive age range in years (0, 255 = any)              |
| diagnoses        | str column   | comma-separated ICD-10 prefixes the item is limited to   |
| valid_from       | int32        | yyyymmdd, 0 = open                                       |
| valid_to         | int32        | yyyymmdd, 0 = open                                       |

Mappings (对照): `hosp_code` and `ins_code`, two str columns of equal length.

Fee lines (`Catalog.preprocess` / `preprocess_batch`):

| key                 | dtype      | meaning                                               |
|---------------------|------------|-------------------------------------------------------|
| medins_list_codg    | str column | hospital item code                                    |
| med_list_codg       | str column | insurance code if the HIS sends it; empty = mapping   |
| cnt                 | int64      | quantity in 1/10_000 units                            |
| pric                | int64      | unit price in fen                                     |
| det_item_fee_sumamt | int64      | line amount in fen                                    |
| hosp_appr_flag      | int64      | opt.; 0 none, 1 approved (lifts diagnosis limits), 2 self-pay |
| fee_date            | int64      | optional; yyyymmdd, 0 = the visit date                |
| visit               | int64      | (batch only) index of the line's visit                |

Line columns are borrowed, not copied, for the length of the call: do not write to them from
another thread while it runs.

Visits (`preprocess_batch`): `treatment` (1 outpatient, 2 inpatient, 3 special outpatient)
and `date` (yyyymmdd) int64, optional `psn_type`, `sex`, `age` int64 and `diagnoses` (str
column of comma-separated ICD-10 codes).

`preprocess_batch` returns per-visit int64 columns `medfee_sumamt`, `fulamt_ownpay_amt`,
`overlmt_amt`, `preselfpay_amt`, `inscp_scp_amt`, `line_count`, and the fee-category sums in
long form: `category_visit`, `category` (one row per visit and category that has lines,
ordered by visit then category) and `category_sums` (rows x [total, fulamt, overlmt,
preselfpay, inscp]).

Settlements (`split_batch`): the five sums `medfee_sumamt`, `fulamt_ownpay_amt`,
`overlmt_amt`, `preselfpay_amt`, `inscp_scp_amt`; the selection `region`, `insutype`,
`psn_type`, `treatment`, `hosp_lv`, `date`, `admission_no`; the person `age`, `cross_region`,
`acct_balance` (int64) and `retired`, `civil_servant`, `assistance`, `acct_used` (bool); and
the accumulators `inpatient_count`, `dedc_paid`, `hifp_paid`, `hifp_base`, `critical_base`,
`critical_paid`, `cvlserv_paid`, `maf_paid`. Absent columns are zero / False. The result has
`rule`, `act_pay_dedc`, each fund, `fund_pay_sumamt`, `psn_part_amt`, `acct_pay`,
`psn_cash_pay`, `balc` and `new_<accumulator>` columns.
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
