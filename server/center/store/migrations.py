"""Versioned schema of the center's PostgreSQL database.

Same rules as the front-end's `server/frontend/store/migrations.py`: each migration is applied once,
in order, in its own transaction together with its row in `schema_migrations`; never edit a
migration that has shipped, add the next one. Several center processes may start at once,
so every step holds a transaction-scoped advisory lock: the first applies, the others wait
and then find the version already there.

The tables mirror the front-end's where they can, so rows cross the line unchanged: money is
BIGINT fen, times BIGINT unix milliseconds (UTC), dates INTEGER yyyymmdd, flags INTEGER 0/1
(not BOOLEAN, so the domain code's ints bind as they do on SQLite). What the center has
beyond the front-end: the ledger of every institution (`settlements.node_id` names the
front-end that made a row), `accumulator_differences`, and `nodes` (which front-end machine
issues each node's ids).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from server.persons import (
    PERSON_COLUMNS,
    SEALED_PERSON_COLUMNS,
    sealed_person_row,
    sealed_records,
)
from server.security.datakeys import DataKeys
from server.security.pii import Vault

# Arbitrary but fixed: every center process must take the same advisory lock.
MIGRATION_LOCK = 0x6D65_6473_6574_6C01  # "medsetl" + 1


def _v4_sealed_persons(conn: psycopg.Connection[Any], keys: DataKeys | None) -> None:
    """Names, ID numbers, card numbers and e-voucher tokens sealed (server/security/pii.py),
    with keyed-hash columns to find a person by them (as the front-end's migration 5)."""
    rows = conn.execute(f"SELECT {', '.join(PERSON_COLUMNS)} FROM persons").fetchall()
    if rows and keys is None:
        raise RuntimeError("migration 4 seals personal data: it needs the data key")
    conn.execute(
        """
CREATE TABLE persons_sealed (
    psn_no TEXT PRIMARY KEY,
    psn_name BYTEA NOT NULL,        -- sealed (server/security/pii.py), as the next three
    psn_cert_no BYTEA NOT NULL,
    card_no BYTEA NOT NULL,
    voucher BYTEA NOT NULL,
    cert_idx BYTEA,                 -- keyed hashes of the three numbers, for lookups
    card_idx BYTEA,
    voucher_idx BYTEA,
    gend INTEGER NOT NULL,
    brdy INTEGER NOT NULL,
    psn_type INTEGER NOT NULL,
    insutype INTEGER NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    cvlserv_flag INTEGER NOT NULL,
    maf_flag INTEGER NOT NULL,
    retired INTEGER NOT NULL,
    cross_region INTEGER NOT NULL,
    balc BIGINT NOT NULL,
    opening_balc BIGINT NOT NULL
)"""
    )
    if rows:
        assert keys is not None
        vault = Vault(keys)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO persons_sealed ({', '.join(SEALED_PERSON_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(SEALED_PERSON_COLUMNS))})",
                [sealed_person_row(vault, dict(zip(PERSON_COLUMNS, r, strict=True))) for r in rows],
            )
    conn.execute(
        "DROP TABLE persons;"
        " ALTER TABLE persons_sealed RENAME TO persons;"
        " ALTER INDEX persons_sealed_pkey RENAME TO persons_pkey;"
        " CREATE INDEX persons_cert ON persons (cert_idx);"
        " CREATE INDEX persons_card ON persons (card_idx);"
        " CREATE INDEX persons_voucher ON persons (voucher_idx)"
    )


def _v5_sealed_records(conn: psycopg.Connection[Any], keys: DataKeys | None) -> None:
    """The stored settlements and answers name their person: sealed (as the front-end's
    migration 6)."""
    settlements = conn.execute("SELECT setl_id, info FROM settlements").fetchall()
    answers = conn.execute(
        "SELECT fixmedins_code, msgid, response FROM idempotency WHERE response <> ''::bytea"
    ).fetchall()
    if (settlements or answers) and keys is None:
        raise RuntimeError("migration 5 seals stored settlements: it needs the data key")
    if not (settlements or answers):
        return
    assert keys is not None
    vault = Vault(keys)
    infos, responses = sealed_records(vault, settlements, answers)
    with conn.cursor() as cur:
        cur.executemany("UPDATE settlements SET info = %s WHERE setl_id = %s", infos)
        cur.executemany(
            "UPDATE idempotency SET response = %s WHERE fixmedins_code = %s AND msgid = %s",
            responses,
        )


Step = str | Callable[[psycopg.Connection[Any], DataKeys | None], None]

MIGRATIONS: list[tuple[int, str, Step]] = [
    (
        1,
        "initial center schema",
        """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('refdata_gen', 0);

CREATE TABLE institutions (
    fixmedins_code TEXT PRIMARY KEY,
    fixmedins_name TEXT NOT NULL,
    hosp_lv INTEGER NOT NULL,
    admdvs TEXT NOT NULL
);

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
    balc BIGINT NOT NULL,           -- personal account balance now
    opening_balc BIGINT NOT NULL    -- as loaded; balc = opening_balc - sum(active acct_pay)
);
CREATE INDEX persons_cert ON persons (psn_cert_no);
CREATE INDEX persons_card ON persons (card_no);
CREATE INDEX persons_voucher ON persons (voucher);

-- Yearly accumulators per person and pool; `opening` rows are what was loaded, so the
-- current values always equal opening + the deltas of the active settlements. The current
-- row (opening = 0) is the one settles lock (SELECT ... FOR UPDATE) to serialise a person.
CREATE TABLE accumulators (
    psn_no TEXT NOT NULL,
    year INTEGER NOT NULL,
    pool TEXT NOT NULL,
    opening INTEGER NOT NULL,       -- 1 = the loaded row, 0 = the current row
    inpatient_count BIGINT NOT NULL,
    dedc_paid BIGINT NOT NULL,
    hifp_paid BIGINT NOT NULL,
    hifp_base BIGINT NOT NULL,
    critical_base BIGINT NOT NULL,
    critical_paid BIGINT NOT NULL,
    cvlserv_paid BIGINT NOT NULL,
    maf_paid BIGINT NOT NULL,
    PRIMARY KEY (psn_no, year, pool, opening)
);

CREATE TABLE catalog_items (
    med_list_codg TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    dosage_form TEXT NOT NULL,
    manufacturer TEXT NOT NULL,
    kind INTEGER NOT NULL,
    chrgitm_lv INTEGER NOT NULL,
    med_chrgitm_type INTEGER NOT NULL,
    price_cap BIGINT NOT NULL,
    selfpay TEXT NOT NULL,          -- JSON [[psn_type, ratio_bp], ...] as on the front-end
    inpatient_only INTEGER NOT NULL,
    sex INTEGER NOT NULL,
    age_min INTEGER NOT NULL,
    age_max INTEGER NOT NULL,
    diagnoses TEXT NOT NULL,
    begndate INTEGER NOT NULL,
    enddate INTEGER NOT NULL,
    ver INTEGER NOT NULL,           -- version that last changed the item (increments by it)
    retired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX catalog_items_ver ON catalog_items (ver);
CREATE TABLE catalog_versions (
    version INTEGER PRIMARY KEY,
    imported_at BIGINT NOT NULL,
    item_count INTEGER NOT NULL
);

CREATE TABLE mappings (
    fixmedins_code TEXT NOT NULL,
    medins_list_codg TEXT NOT NULL,
    med_list_codg TEXT NOT NULL,
    medins_list_name TEXT NOT NULL,
    PRIMARY KEY (fixmedins_code, medins_list_codg)
);

CREATE TABLE policies (
    version INTEGER PRIMARY KEY,
    policy_id TEXT NOT NULL,
    name TEXT NOT NULL,
    canonical_json TEXT NOT NULL,   -- kept as text: the engine parses these exact bytes
    loaded_at BIGINT NOT NULL
);

-- The ledger of every institution: settlements the center computed (mode 2) and those a
-- front-end settled locally and forwarded (mode 1). setl_id carries the node prefix, so it
-- is unique across front-ends and is what makes a forwarded copy idempotent.
CREATE TABLE settlements (
    setl_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,          -- the front-end that made it
    fixmedins_code TEXT NOT NULL,
    mdtrt_id TEXT NOT NULL,
    psn_no TEXT NOT NULL,
    insutype INTEGER NOT NULL,
    clr_type INTEGER NOT NULL,
    msgid TEXT NOT NULL,
    invono TEXT NOT NULL,
    setl_time BIGINT NOT NULL,
    setl_date INTEGER NOT NULL,
    state INTEGER NOT NULL,         -- SettlementState: 1 settled, 2 cancelled
    mode INTEGER NOT NULL,          -- SettlementMode: 1 local, 2 center
    offline INTEGER NOT NULL,       -- 1 = settled locally while the center was unreachable
    medfee_sumamt BIGINT NOT NULL,
    fund_pay_sumamt BIGINT NOT NULL,
    acct_pay BIGINT NOT NULL,
    psn_cash_pay BIGINT NOT NULL,
    acc_year INTEGER NOT NULL,
    acc_pool TEXT NOT NULL,
    acc_delta JSONB NOT NULL,       -- {field: change} applied to the accumulators
    info BYTEA NOT NULL,            -- medsettle.v1.SetlInfo as settled (state fields aside)
    received_at BIGINT NOT NULL,    -- when the center recorded it (forwarded rows arrive late)
    cancel_id TEXT,
    cancel_msgid TEXT,
    cancel_time BIGINT,
    cancel_date INTEGER
);
CREATE INDEX settlements_inst_date ON settlements (fixmedins_code, setl_date);
CREATE INDEX settlements_inst_cancel ON settlements (fixmedins_code, cancel_date);
CREATE INDEX settlements_psn ON settlements (psn_no, acc_year);

CREATE TABLE setl_legs (
    setl_id TEXT NOT NULL REFERENCES settlements (setl_id),
    fund_pay_type TEXT NOT NULL,
    base BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (setl_id, fund_pay_type)
);

-- Idempotency of the center's own state-changing calls, as on the front-end.
CREATE TABLE idempotency (
    fixmedins_code TEXT NOT NULL,
    msgid TEXT NOT NULL,
    method TEXT NOT NULL,
    req_hash BYTEA NOT NULL,
    response BYTEA NOT NULL,
    ref TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (fixmedins_code, msgid)
);

-- A forwarded settlement computed on other accumulators than the center's (the person
-- settled elsewhere meanwhile): both sides are kept for reconciliation, nothing overwritten.
CREATE TABLE accumulator_differences (
    setl_id TEXT PRIMARY KEY REFERENCES settlements (setl_id),
    psn_no TEXT NOT NULL,
    year INTEGER NOT NULL,
    pool TEXT NOT NULL,
    ours JSONB NOT NULL,            -- the center's accumulators before the settlement
    theirs JSONB NOT NULL,          -- the front-end's
    recorded_at BIGINT NOT NULL
);
CREATE INDEX accumulator_differences_psn ON accumulator_differences (psn_no, year);
""",
    ),
    (
        2,
        "one active settlement per visit",
        """
-- Two front-end calls racing to settle one visit (different msgids) must not both land.
CREATE UNIQUE INDEX settlements_one_active ON settlements (fixmedins_code, mdtrt_id)
    WHERE state = 1;
""",
    ),
    (
        3,
        "the hash-chained audit trail, one chain per institution",
        """
CREATE TABLE audit (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    opter TEXT NOT NULL,
    roles TEXT NOT NULL,
    rpc TEXT NOT NULL,
    objects TEXT NOT NULL,
    outcome TEXT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_at ON audit (at);
CREATE TABLE audit_anchor (
    chain TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    pruned_before BIGINT NOT NULL,
    mac BYTEA NOT NULL
);
""",
    ),
    (4, "personal identifiers sealed, found by keyed hash", _v4_sealed_persons),
    (5, "stored settlements and answers sealed", _v5_sealed_records),
    (
        6,
        "front-end instances bound to their node ids",
        """
-- Which front-end machine speaks for a node of an institution: the first instance id seen
-- (server/nodes.py). Another machine with the same node id would issue the same ids.
CREATE TABLE nodes (
    fixmedins_code TEXT NOT NULL,
    node_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,      -- the front-end's `<db>.node`
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (fixmedins_code, node_id)
);
""",
    ),
]


def migrate(conn: psycopg.Connection[Any], keys: DataKeys | None = None) -> int:
    """Apply the migrations this database lacks; returns the schema version after.

    `conn` must be in autocommit mode: each step is its own explicit transaction.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        # Under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide otherwise.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    for version, name, step in MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
            ).fetchone()
            if done:
                continue
            if callable(step):
                step(conn, keys)
            else:
                conn.execute(step)  # no parameters, so several statements go in one call
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
    return max(v for v, _, _ in MIGRATIONS)
