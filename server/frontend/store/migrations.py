"""Versioned schema of the front-end's SQLite database.

Each migration is applied once, in order, in one transaction with its row in
`schema_migrations`; never edit a migration that has shipped, add the next one.

Money columns are INTEGER fen; times are INTEGER unix milliseconds (UTC); dates are INTEGER
yyyymmdd. Ids handed to clients (`mdtrt_id`, `setl_id`) are text with a node prefix so a
center can hold every front-end's ids side by side.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from server.frontend.store import line_results
from server.persons import (
    PERSON_COLUMNS,
    SEALED_PERSON_COLUMNS,
    sealed_person_row,
    sealed_records,
)
from server.security.datakeys import DataKeys
from server.security.pii import Vault

# A step is SQL, or a function of the connection and the data keys (for steps that seal or
# re-seal personal data; None when the caller has no keys, fine while the table is empty).
Step = str | Callable[[sqlite3.Connection, DataKeys | None], None]


def _v2_line_results(conn: sqlite3.Connection, keys: DataKeys | None) -> None:
    """Per-line results move from `setl_lines` rows into one blob per settlement; the
    cancel-date, invoice and outbox indexes keep only the rows they are searched for."""
    conn.execute("ALTER TABLE settlements ADD COLUMN line_results BLOB NOT NULL DEFAULT x''")
    lines: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    for row in conn.execute("SELECT * FROM setl_lines ORDER BY setl_id, feedetl_sn"):
        lines[row[0]].append(row[1:])
    for setl_id, rows in lines.items():
        ints = np.array([r[2:] for r in rows], dtype=np.int64).reshape(len(rows), 8)
        blob = line_results.encode([str(r[0]) for r in rows], [str(r[1]) for r in rows], ints)
        conn.execute("UPDATE settlements SET line_results = ? WHERE setl_id = ?", (blob, setl_id))
    for stmt in (
        "DROP TABLE setl_lines",
        "DROP INDEX settlements_inst_cancel",
        "CREATE INDEX settlements_inst_cancel ON settlements (fixmedins_code, cancel_date)"
        " WHERE cancel_date IS NOT NULL",
        "DROP INDEX settlements_invono",
        "CREATE INDEX settlements_invono ON settlements (fixmedins_code, invono)"
        " WHERE invono <> ''",
        # The forwarder's scans (and the backlog gauge) read only the unsent rows.
        "CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
    ):
        conn.execute(stmt)


def _v5_sealed_persons(conn: sqlite3.Connection, keys: DataKeys | None) -> None:
    """Names, ID numbers, card numbers and e-voucher tokens sealed (server/security/pii.py),
    with keyed-hash columns to find a person by them; the clear columns and their indexes
    go."""
    rows = conn.execute(f"SELECT {', '.join(PERSON_COLUMNS)} FROM persons").fetchall()
    if rows and keys is None:
        raise RuntimeError("migration 5 seals personal data: it needs the data key")
    # The pages the clear table frees are zeroed, not left in the file for anyone to read.
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(
        """CREATE TABLE persons_sealed (
    psn_no TEXT PRIMARY KEY,
    psn_name BLOB NOT NULL,         -- sealed (server/security/pii.py), as the next three
    psn_cert_no BLOB NOT NULL,
    card_no BLOB NOT NULL,
    voucher BLOB NOT NULL,
    cert_idx BLOB,                  -- keyed hashes of the three numbers, for lookups
    card_idx BLOB,
    voucher_idx BLOB,
    gend INTEGER NOT NULL,
    brdy INTEGER NOT NULL,
    psn_type INTEGER NOT NULL,
    insutype INTEGER NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    cvlserv_flag INTEGER NOT NULL,
    maf_flag INTEGER NOT NULL,
    retired INTEGER NOT NULL,
    cross_region INTEGER NOT NULL,
    balc INTEGER NOT NULL,
    opening_balc INTEGER NOT NULL
) WITHOUT ROWID"""
    )
    if rows:
        assert keys is not None
        vault = Vault(keys)
        conn.executemany(
            f"INSERT INTO persons_sealed ({', '.join(SEALED_PERSON_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(SEALED_PERSON_COLUMNS))})",
            [sealed_person_row(vault, dict(zip(PERSON_COLUMNS, r, strict=True))) for r in rows],
        )
    for stmt in (
        "DROP TABLE persons",
        "ALTER TABLE persons_sealed RENAME TO persons",
        "CREATE INDEX persons_cert ON persons (cert_idx)",
        "CREATE INDEX persons_card ON persons (card_idx)",
        "CREATE INDEX persons_voucher ON persons (voucher_idx)",
    ):
        conn.execute(stmt)


def _v6_sealed_records(conn: sqlite3.Connection, keys: DataKeys | None) -> None:
    """The stored settlements and answers name their person (SetlInfo.psn_name): sealed
    like the persons table, bound to the settlement or to (institution, msgid)."""
    settlements = conn.execute("SELECT setl_id, info FROM settlements").fetchall()
    answers = conn.execute(
        "SELECT fixmedins_code, msgid, response FROM idempotency WHERE response <> x''"
    ).fetchall()
    if (settlements or answers) and keys is None:
        raise RuntimeError("migration 6 seals stored settlements: it needs the data key")
    if not (settlements or answers):
        return
    assert keys is not None
    vault = Vault(keys)
    conn.execute("PRAGMA secure_delete = ON")
    infos, responses = sealed_records(vault, settlements, answers)
    conn.executemany("UPDATE settlements SET info = ? WHERE setl_id = ?", infos)
    conn.executemany(
        "UPDATE idempotency SET response = ? WHERE fixmedins_code = ? AND msgid = ?", responses
    )


def _v8_sealed_diagnoses(conn: sqlite3.Connection, keys: DataKeys | None) -> None:
    """Each visit's diagnoses (health data, per person) sealed like the persons table, bound
    to the visit; the pages that held them in clear are zeroed."""
    visits = conn.execute("SELECT mdtrt_id, dise_codg FROM visits").fetchall()
    if visits and keys is None:
        raise RuntimeError("migration 8 seals the visits' diagnoses: it needs the data key")
    if not visits:
        return
    assert keys is not None
    vault = Vault(keys)
    conn.execute("PRAGMA secure_delete = ON")
    conn.executemany(
        "UPDATE visits SET dise_codg = ? WHERE mdtrt_id = ?",
        [(vault.seal_diagnoses(m, str(d).split(",") if d else []), m) for m, d in visits],
    )


MIGRATIONS: list[tuple[int, str, Step]] = [
    (
        1,
        "initial front-end schema",
        """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('refdata_gen', 0);

CREATE TABLE institutions (
    fixmedins_code TEXT PRIMARY KEY,
    fixmedins_name TEXT NOT NULL,
    hosp_lv INTEGER NOT NULL,
    admdvs TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE signins (
    sign_no TEXT PRIMARY KEY,
    fixmedins_code TEXT NOT NULL,
    opter TEXT NOT NULL,
    sign_time INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    sign_out_time INTEGER
) WITHOUT ROWID;

CREATE TABLE persons (
    psn_no TEXT PRIMARY KEY,
    psn_name TEXT NOT NULL,
    psn_cert_no TEXT NOT NULL,
    card_no TEXT NOT NULL,
    voucher TEXT NOT NULL,
    gend INTEGER NOT NULL,
    brdy INTEGER NOT NULL,
    psn_type INTEGER NOT NULL,
    insutype INTEGER NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    cvlserv_flag INTEGER NOT NULL,
    maf_flag INTEGER NOT NULL,
    retired INTEGER NOT NULL,
    cross_region INTEGER NOT NULL,
    balc INTEGER NOT NULL,          -- personal account balance now
    opening_balc INTEGER NOT NULL   -- as loaded; balc = opening_balc - sum(active acct_pay)
) WITHOUT ROWID;
CREATE INDEX persons_cert ON persons (psn_cert_no);
CREATE INDEX persons_card ON persons (card_no);
CREATE INDEX persons_voucher ON persons (voucher);

-- Yearly accumulators per person and pool; `opening` rows are what was loaded, so the
-- current values always equal opening + the deltas of the active settlements.
CREATE TABLE accumulators (
    psn_no TEXT NOT NULL,
    year INTEGER NOT NULL,
    pool TEXT NOT NULL,
    opening INTEGER NOT NULL,       -- 1 = the loaded row, 0 = the current row
    inpatient_count INTEGER NOT NULL,
    dedc_paid INTEGER NOT NULL,
    hifp_paid INTEGER NOT NULL,
    hifp_base INTEGER NOT NULL,
    critical_base INTEGER NOT NULL,
    critical_paid INTEGER NOT NULL,
    cvlserv_paid INTEGER NOT NULL,
    maf_paid INTEGER NOT NULL,
    PRIMARY KEY (psn_no, year, pool, opening)
) WITHOUT ROWID;

CREATE TABLE catalog_items (
    med_list_codg TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    dosage_form TEXT NOT NULL,
    manufacturer TEXT NOT NULL,
    kind INTEGER NOT NULL,
    chrgitm_lv INTEGER NOT NULL,
    med_chrgitm_type INTEGER NOT NULL,
    price_cap INTEGER NOT NULL,
    selfpay TEXT NOT NULL,          -- JSON [[psn_type, ratio_bp], ...]; psn_type 0 = default
    inpatient_only INTEGER NOT NULL,
    sex INTEGER NOT NULL,
    age_min INTEGER NOT NULL,
    age_max INTEGER NOT NULL,
    diagnoses TEXT NOT NULL,
    begndate INTEGER NOT NULL,
    enddate INTEGER NOT NULL,
    ver INTEGER NOT NULL,           -- version that last changed the item
    retired INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX catalog_items_ver ON catalog_items (ver);
CREATE TABLE catalog_versions (
    version INTEGER PRIMARY KEY,
    imported_at INTEGER NOT NULL,
    item_count INTEGER NOT NULL
);

CREATE TABLE mappings (
    fixmedins_code TEXT NOT NULL,
    medins_list_codg TEXT NOT NULL,
    med_list_codg TEXT NOT NULL,
    medins_list_name TEXT NOT NULL,
    PRIMARY KEY (fixmedins_code, medins_list_codg)
) WITHOUT ROWID;

CREATE TABLE policies (
    version INTEGER PRIMARY KEY,
    policy_id TEXT NOT NULL,
    name TEXT NOT NULL,
    canonical_json TEXT NOT NULL,
    loaded_at INTEGER NOT NULL
);

CREATE TABLE visits (
    id INTEGER PRIMARY KEY,
    mdtrt_id TEXT NOT NULL UNIQUE,
    fixmedins_code TEXT NOT NULL,
    psn_no TEXT NOT NULL,
    insutype INTEGER NOT NULL,
    med_type INTEGER NOT NULL,
    treatment INTEGER NOT NULL,     -- engine code: 1 outpatient, 2 inpatient, 3 special
    begndate INTEGER NOT NULL,
    ipt_otp_no TEXT NOT NULL,
    dise_codg TEXT NOT NULL,        -- comma-separated ICD-10
    dept_codg TEXT NOT NULL,
    atddr_no TEXT NOT NULL,
    state TEXT NOT NULL,            -- registered | settled | cancelled
    msgid TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX visits_psn ON visits (psn_no);

CREATE TABLE fee_lines (
    visit_id INTEGER NOT NULL,
    feedetl_sn TEXT NOT NULL,
    seq INTEGER NOT NULL,
    medins_list_codg TEXT NOT NULL,
    med_list_codg TEXT NOT NULL,
    cnt INTEGER NOT NULL,
    pric INTEGER NOT NULL,
    det_item_fee_sumamt INTEGER NOT NULL,
    fee_ocur_date INTEGER NOT NULL,
    bilg_dr_codg TEXT NOT NULL,
    hosp_appr_flag INTEGER NOT NULL,
    msgid TEXT NOT NULL,            -- the upload that brought the line (for Reverse)
    PRIMARY KEY (visit_id, feedetl_sn)
) WITHOUT ROWID;

CREATE TABLE settlements (
    id INTEGER PRIMARY KEY,
    setl_id TEXT NOT NULL UNIQUE,
    fixmedins_code TEXT NOT NULL,
    mdtrt_id TEXT NOT NULL,
    visit_id INTEGER NOT NULL,
    psn_no TEXT NOT NULL,
    insutype INTEGER NOT NULL,
    clr_type INTEGER NOT NULL,
    msgid TEXT NOT NULL,
    invono TEXT NOT NULL,
    setl_time INTEGER NOT NULL,
    setl_date INTEGER NOT NULL,
    state INTEGER NOT NULL,         -- SettlementState: 1 settled, 2 cancelled
    mode INTEGER NOT NULL,          -- SettlementMode: 1 local, 2 center
    offline INTEGER NOT NULL,
    medfee_sumamt INTEGER NOT NULL,
    fund_pay_sumamt INTEGER NOT NULL,
    acct_pay INTEGER NOT NULL,
    psn_cash_pay INTEGER NOT NULL,
    acc_year INTEGER NOT NULL,
    acc_pool TEXT NOT NULL,
    acc_delta TEXT NOT NULL,        -- JSON {field: change} applied to the accumulators
    acc_before TEXT NOT NULL,       -- JSON {field: value} the split started from
    info BLOB NOT NULL,             -- medsettle.v1.SetlInfo as settled (state fields aside)
    cancel_id TEXT,
    cancel_msgid TEXT,
    cancel_time INTEGER,
    cancel_date INTEGER
);
CREATE INDEX settlements_visit ON settlements (visit_id);
CREATE INDEX settlements_inst_time ON settlements (fixmedins_code, setl_time);
CREATE INDEX settlements_inst_date ON settlements (fixmedins_code, setl_date);
CREATE INDEX settlements_inst_cancel ON settlements (fixmedins_code, cancel_date);
CREATE INDEX settlements_invono ON settlements (fixmedins_code, invono);
CREATE INDEX settlements_psn ON settlements (psn_no);

CREATE TABLE setl_legs (
    setl_id TEXT NOT NULL,
    fund_pay_type TEXT NOT NULL,
    base INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (setl_id, fund_pay_type)
) WITHOUT ROWID;

CREATE TABLE setl_lines (
    setl_id TEXT NOT NULL,
    feedetl_sn TEXT NOT NULL,
    med_list_codg TEXT NOT NULL,
    chrgitm_lv INTEGER NOT NULL,
    med_chrgitm_type INTEGER NOT NULL,
    det_item_fee_sumamt INTEGER NOT NULL,
    fulamt_ownpay_amt INTEGER NOT NULL,
    overlmt_amt INTEGER NOT NULL,
    preselfpay_amt INTEGER NOT NULL,
    inscp_scp_amt INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (setl_id, feedetl_sn)
) WITHOUT ROWID;

-- Idempotency: one row per (institution, msgid) of every state-changing call that
-- succeeded, with the exact response bytes; `method` REVERSED marks a burnt msgid.
CREATE TABLE idempotency (
    fixmedins_code TEXT NOT NULL,
    msgid TEXT NOT NULL,
    method TEXT NOT NULL,
    req_hash BLOB NOT NULL,
    response BLOB NOT NULL,
    ref TEXT NOT NULL,              -- the object it made or changed (mdtrt_id, setl_id, ...)
    created_at INTEGER NOT NULL,
    PRIMARY KEY (fixmedins_code, msgid)
) WITHOUT ROWID;

-- Store-and-forward to the center (local mode): written in the same transaction as the
-- settlement or cancel it carries; the forwarder sends rows in id order.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,             -- settle | cancel
    ref TEXT NOT NULL,              -- setl_id
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at INTEGER
);
""",
    ),
    (2, "line results as one blob per settlement; partial indexes", _v2_line_results),
    (
        3,
        "operator registry; roles bound to each sign-in",
        """
-- Who may sign in for an institution, holding which roles (server/security/roles.py).
CREATE TABLE operators (
    fixmedins_code TEXT NOT NULL,
    opter TEXT NOT NULL,
    opter_name TEXT NOT NULL,
    roles TEXT NOT NULL,            -- comma-separated role names
    disabled INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (fixmedins_code, opter)
) WITHOUT ROWID;
-- Sign-ins made before the registry carry no role: their operators sign in again.
ALTER TABLE signins ADD COLUMN roles TEXT NOT NULL DEFAULT '';
CREATE INDEX signins_opter ON signins (fixmedins_code, opter) WHERE sign_out_time IS NULL;
""",
    ),
    (
        4,
        "the hash-chained audit trail",
        """
-- The audit trail (server/security/audit.py): hash-chained per `chain`.
CREATE TABLE audit (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    fixmedins_code TEXT NOT NULL,
    opter TEXT NOT NULL,
    roles TEXT NOT NULL,
    rpc TEXT NOT NULL,
    objects TEXT NOT NULL,
    outcome TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_at ON audit (at);
-- The last pruned record of each chain: where the remaining records start.
CREATE TABLE audit_anchor (
    chain TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    pruned_before INTEGER NOT NULL,
    mac BLOB NOT NULL
);
""",
    ),
    (5, "personal identifiers sealed, found by keyed hash", _v5_sealed_persons),
    (6, "stored settlements and answers sealed", _v6_sealed_records),
    (
        7,
        "operators' passwords (salted scrypt hashes) and sign-in lock-out",
        """
-- server/security/passwords.py: 'scrypt$<log2 n>$<r>$<p>$<salt>$<hash>'; '' = none set yet
-- (an operator registered before passwords signs in once the security officer sets one).
ALTER TABLE operators ADD COLUMN password TEXT NOT NULL DEFAULT '';
ALTER TABLE operators ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;      -- wrong in a row
ALTER TABLE operators ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0;  -- unix ms
""",
    ),
    (8, "diagnoses sealed", _v8_sealed_diagnoses),
    (
        9,
        "fee lines classified by the institution's mapping only",
        """
-- A code the HIS sent with a line used to override the mapping; the mapping decides now
-- (server/frontend/visits.py, classified_by_mapping), also for lines uploaded before. What
-- was settled keeps its line results (settlements.line_results).
UPDATE fee_lines SET med_list_codg = '' WHERE med_list_codg <> ''
""",
    ),
    (
        10,
        "refused sign-ins counted in a bounded table",
        """
-- A refused sign-in of an operator who is not there (unknown, locked, disabled) writes one
-- row here as a wrong password writes the operator's count: every refusal costs the same
-- commit, so its time does not tell whether the operator exists. 256 buckets at most.
CREATE TABLE signin_refusals (bucket INTEGER PRIMARY KEY, n INTEGER NOT NULL)
""",
    ),
    (
        11,
        "the forwarder finds due undo rows without walking the backlog",
        """
-- Looked for before every batch; through outbox_unsent alone the search read every unsent
-- row, and a backlog of 100,000 settlements made each batch wait for it.
CREATE INDEX outbox_undo ON outbox (id) WHERE kind = 'undo' AND sent_at IS NULL
""",
    ),
]


def migrate(conn: sqlite3.Connection, keys: DataKeys | None = None) -> int:
    """Apply the migrations this database lacks; returns the schema version after."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        have = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, step in MIGRATIONS:
            if version in have:
                continue
            if callable(step):
                step(conn, keys)
            else:
                for stmt in _statements(step):
                    conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))", (version, name)
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(v for v, _, _ in MIGRATIONS)


def _statements(sql: str) -> list[str]:
    """Split a migration into statements: comments dropped (no literal holds `--` or `;`)."""
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
