"""A person as both roles hold them: the yearly accumulator fields (`ACC_FIELDS`), the row
a settlement reads (`PersonRow`), and the persons table as both stores keep it: which
columns are sealed personal data (server/security/pii.py), which keyed-hash column finds a
person by which number, and the row a person record becomes; and the sealing of the stored
records that name a person. The migrations that sealed them (SQLite 5 and 6, PostgreSQL 4
and 5) use it too, so a later change of the layout is a new migration, never an edit here
alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.security.pii import Vault

# A person's yearly accumulator columns, in the order every store and the engine's
# `Accumulators` use.
ACC_FIELDS = (
    "inpatient_count",
    "dedc_paid",
    "hifp_paid",
    "hifp_base",
    "critical_base",
    "critical_paid",
    "cvlserv_paid",
    "maf_paid",
)


@dataclass
class PersonRow:
    """What a settlement reads of a person (opened from the sealed row by `open_person`)."""

    psn_no: str
    psn_name: str
    psn_cert_no: str
    gend: int
    brdy: int
    psn_type: int
    insutype: int
    insuplc_admdvs: str
    cvlserv_flag: bool
    maf_flag: bool
    retired: bool
    cross_region: int
    balc: int


# The layout before sealing, and the person record's fields in that order.
PERSON_COLUMNS = (
    "psn_no",
    "psn_name",
    "psn_cert_no",
    "card_no",
    "voucher",
    "gend",
    "brdy",
    "psn_type",
    "insutype",
    "insuplc_admdvs",
    "cvlserv_flag",
    "maf_flag",
    "retired",
    "cross_region",
    "balc",
    "opening_balc",
)
SEALED = ("psn_name", "psn_cert_no", "card_no", "voucher")
# The keyed-hash column of each number a person is looked up by (mdtrt_cert_type 02, 03, 01).
INDEX_OF = {"psn_cert_no": "cert_idx", "card_no": "card_idx", "voucher": "voucher_idx"}
SEALED_PERSON_COLUMNS = PERSON_COLUMNS[:5] + tuple(INDEX_OF.values()) + PERSON_COLUMNS[5:]
# What a settlement reads of a person, sealed columns included (opened by `open_person`).
READ_COLUMNS = (
    "psn_no, psn_name, psn_cert_no, gend, brdy, psn_type, insutype, insuplc_admdvs,"
    " cvlserv_flag, maf_flag, retired, cross_region, balc"
)


def sealed_person_row(vault: Vault, p: Mapping[str, Any]) -> tuple[Any, ...]:
    """The stored row of a person record (values by PERSON_COLUMNS' names)."""
    psn_no = str(p["psn_no"])
    index_field = {v: k for k, v in INDEX_OF.items()}
    out: list[Any] = []
    for col in SEALED_PERSON_COLUMNS:
        if col in SEALED:
            out.append(vault.seal(col, psn_no, str(p[col])))
        elif col in index_field:
            out.append(vault.index(index_field[col], str(p[index_field[col]])))
        else:
            out.append(p[col])
    return tuple(out)


def record_row(vault: Vault, p: Any, balc: int) -> tuple[Any, ...]:
    """The stored row of a `catalog_pb2.PersonRecord` whose balance now is `balc`."""
    values = {c: getattr(p, c) for c in PERSON_COLUMNS[:14]}
    for flag in ("cvlserv_flag", "maf_flag", "retired"):
        values[flag] = int(values[flag])
    values["balc"], values["opening_balc"] = balc, p.balc
    return sealed_person_row(vault, values)


def insert_sql(placeholder: str, upsert: str = "INSERT") -> str:
    """`INSERT INTO persons (...) VALUES (...)` with the database's placeholder."""
    cols = ", ".join(SEALED_PERSON_COLUMNS)
    marks = ", ".join([placeholder] * len(SEALED_PERSON_COLUMNS))
    return f"{upsert} INTO persons ({cols}) VALUES ({marks})"


def sealed_records(
    vault: Vault,
    settlements: list[tuple[Any, ...]],
    answers: list[tuple[Any, ...]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The update parameters that seal stored settlements `(setl_id, info)` and stored
    answers `(fixmedins_code, msgid, response)`, which name their person: `(info, setl_id)`
    and `(response, fixmedins_code, msgid)` (SQLite 6, PostgreSQL 5)."""
    return (
        [(vault.seal_setlinfo(s, bytes(b)), s) for s, b in settlements],
        [(vault.seal_answer(c, m, bytes(b)), c, m) for c, m, b in answers],
    )


def open_person(vault: Vault, row: tuple[Any, ...]) -> list[Any]:
    """A READ_COLUMNS row with its name and ID number opened."""
    r = list(row)
    r[1] = vault.open("psn_name", r[0], bytes(r[1]))
    r[2] = vault.open("psn_cert_no", r[0], bytes(r[2]))
    return r
