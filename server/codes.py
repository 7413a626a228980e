"""The national code tables both roles check a visit against (med_type, certificate types)
and the date and age rules of a visit: the front-end when a HIS registers and settles, the
center when it settles in center mode or takes a forwarded settlement."""

from __future__ import annotations

INPATIENT_MED_TYPES = frozenset({21, 24, 52})
SPECIAL_MED_TYPES = frozenset({14})
MED_TYPES = frozenset({11, 12, 13, 14, 15, 16, 21, 24, 51, 52})
CERT_TYPES = {"01": "voucher", "02": "psn_cert_no", "03": "card_no"}


def treatment_of(med_type: int) -> int:
    """The engine's treatment code for a national med_type."""
    if med_type in INPATIENT_MED_TYPES:
        return 2
    if med_type in SPECIAL_MED_TYPES:
        return 3
    return 1


def valid_date(d: int) -> bool:
    y, m, day = d // 10000, d // 100 % 100, d % 100
    if not (1900 <= y <= 2999 and 1 <= m <= 12 and 1 <= day <= 31):
        return False
    mdays = [31, 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28, 31, 30, 31, 30]
    mdays += [31, 31, 30, 31, 30, 31]
    return day <= mdays[m - 1]


def age_on(brdy: int, date: int) -> int:
    return max(0, (date - brdy) // 10000)
