"""The Python checks of a fee upload's lines that `engine_rs.FeeUpload` replaced
(engine_rs/src/upload.rs), kept as its test oracle: `limits.check_fee_lines` (each
message's amounts, as it arrives) and the per-line checks `visits.upload_fees` made over
the whole upload, with the columns it built."""

from __future__ import annotations

from collections.abc import Sequence

from medsettle.v1 import settlement_pb2
from server.codes import valid_date

CNT_SCALE = 10_000
MAX_VIOLATIONS = 20
Violation = tuple[str, str]


def amount_violations(
    lines: Sequence[settlement_pb2.FeeLine], max_line_fen: int, first: int = 0
) -> list[Violation]:
    v: list[Violation] = []
    for i, ln in enumerate(lines, first):
        if ln.det_item_fee_sumamt > max_line_fen:
            v.append(
                (
                    f"lines[{i}].det_item_fee_sumamt",
                    f"{ln.det_item_fee_sumamt} fen is more than the {max_line_fen} one line may be",
                )
            )
        if ln.pric > max_line_fen:
            v.append(
                (f"lines[{i}].pric", f"{ln.pric} fen is more than {max_line_fen} for one unit")
            )
        elif ln.cnt > 0 and ln.pric > 0 and ln.cnt * ln.pric > max_line_fen * CNT_SCALE:
            v.append(
                (
                    f"lines[{i}].cnt",
                    f"cnt x pric is {ln.cnt * ln.pric // CNT_SCALE} fen, more than the"
                    f" {max_line_fen} one line may be",
                )
            )
        if len(v) >= MAX_VIOLATIONS:
            break
    return v


def line_violations(lines: Sequence[settlement_pb2.FeeLine]) -> list[Violation]:
    v: list[Violation] = []
    seen: set[str] = set()
    for i, ln in enumerate(lines):
        if not ln.feedetl_sn or len(ln.feedetl_sn) > 64:
            v.append((f"lines[{i}].feedetl_sn", "is required (at most 64 characters)"))
        elif ln.feedetl_sn in seen:
            v.append((f"lines[{i}].feedetl_sn", f"{ln.feedetl_sn} appears twice in this upload"))
        seen.add(ln.feedetl_sn)
        if not ln.medins_list_codg:
            v.append((f"lines[{i}].medins_list_codg", "is required"))
        if ln.fee_ocur_date and not valid_date(ln.fee_ocur_date):
            v.append((f"lines[{i}].fee_ocur_date", f"{ln.fee_ocur_date} is not a yyyymmdd date"))
        if ln.hosp_appr_flag not in (0, 1, 2):
            v.append((f"lines[{i}].hosp_appr_flag", "must be 0, 1 or 2"))
        if len(v) >= MAX_VIOLATIONS:
            break
    return v


def columns(lines: Sequence[settlement_pb2.FeeLine]) -> dict[str, list[object]]:
    return {
        "feedetl_sn": [ln.feedetl_sn for ln in lines],
        "medins_list_codg": [ln.medins_list_codg for ln in lines],
        "med_list_codg": [ln.med_list_codg for ln in lines],
        "bilg_dr_codg": [ln.bilg_dr_codg for ln in lines],
        "nums": [
            [ln.cnt, ln.pric, ln.det_item_fee_sumamt, ln.fee_ocur_date, ln.hosp_appr_flag]
            for ln in lines
        ],
    }
