"""The demo data set, generated (deterministic): three institutions, a catalog of a few
thousand realistic items, each hospital's item master with its mappings (some items left
unmapped), persons of several kinds, and the demo city policy.

`seed(store)` loads it into an empty front-end database through the same operations the
Catalog service runs, with the demo operators of every institution (`OPERATORS`), whose
generated password it writes to `<db>.demo-password`. `his_items(code)` is the hospital's
own item master (what a HIS knows: its codes, names and prices), used by the scripted demo
visit and the tests.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from medsettle.v1 import catalog_pb2
from server import persons as persons_table
from server import reference
from server.columns import unpack_strings
from server.common import now_ms
from server.config import Config, Role
from server.demo.synth.catalog import SynthCatalog, make_catalog, make_hospital_items
from server.frontend import operators
from server.frontend.operators import Operator
from server.frontend.store.sqlite import Store
from server.persons import ACC_FIELDS
from server.reference import catalog_row
from server.security import passwords, roles
from server.security.pii import Vault

CATALOG_SIZE = 3000
CATALOG_VERSION = 1
HOSPITAL_ITEMS = 1200
MAPPED_SHARE = 0.92
YEAR = 2026

INSTITUTIONS = [
    catalog_pb2.Institution(
        fixmedins_code="H44010100001",
        fixmedins_name="示范市第一人民医院",
        hosp_lv=3,
        admdvs="440100",
    ),
    catalog_pb2.Institution(
        fixmedins_code="H44010100002", fixmedins_name="示范市中医院", hosp_lv=2, admdvs="440100"
    ),
    catalog_pb2.Institution(
        fixmedins_code="H44030100001", fixmedins_name="邻市人民医院", hosp_lv=3, admdvs="440300"
    ),
]


def policy_text() -> str:
    return (resources.files("server.demo") / "demo_city_policy.toml").read_text("utf-8")


@cache
def catalog() -> SynthCatalog:
    return make_catalog(CATALOG_SIZE, seed=2026)


def catalog_items(cat: SynthCatalog | None = None) -> list[catalog_pb2.CatalogItem]:
    """The catalog's items as the Catalog service takes them (the demo catalog by default;
    the load kit passes one of its own size)."""
    cat = cat or catalog()
    cols = {
        k: unpack_strings(cat.items[k])
        for k in ("code", "name", "spec", "dosage_form", "manufacturer", "diagnoses")
    }
    it = cat.items
    out = []
    for i in range(len(cat)):
        sp = [int(x) for x in it["selfpay_prop_bp"][i]]
        ratios = [catalog_pb2.SelfpayRatio(psn_type=0, ratio_bp=sp[0])]
        ratios += [
            catalog_pb2.SelfpayRatio(psn_type=p, ratio_bp=sp[j + 1])
            for j, p in enumerate(cat.selfpay_psn_types)
            if sp[j + 1] != sp[0]
        ]
        age_max = int(it["age_max"][i])
        out.append(
            catalog_pb2.CatalogItem(
                med_list_codg=cols["code"][i],
                name=cols["name"][i],
                spec=cols["spec"][i],
                dosage_form=cols["dosage_form"][i],
                manufacturer=cols["manufacturer"][i],
                kind=int(it["kind"][i]),
                chrgitm_lv=int(it["chrgitm_lv"][i]),
                med_chrgitm_type=int(it["fee_category"][i]),
                hilist_pric_uplmt_amt=int(it["price_cap"][i]),
                selfpay_prop=ratios,
                inpatient_only=bool(it["inpatient_only"][i]),
                sex=int(it["sex"][i]),
                age_min=int(it["age_min"][i]),
                age_max=0 if age_max == 255 else age_max,
                diagnoses=cols["diagnoses"][i],
                begndate=int(it["valid_from"][i]),
                enddate=int(it["valid_to"][i]),
            )
        )
    return out


@dataclass(frozen=True)
class HisItem:
    """One line of a hospital's item master (院内收费项目)."""

    code: str
    name: str
    spec: str
    price: int  # fen per unit
    mapped_to: str  # insurance code, "" when the hospital has not mapped it


@cache
def his_items(fixmedins_code: str) -> tuple[HisItem, ...]:
    """The institution's item master over the demo catalog: its codes and prices; most are
    mapped."""
    return hospital_master(catalog(), fixmedins_code, HOSPITAL_ITEMS, MAPPED_SHARE)


def hospital_master(
    cat: SynthCatalog, fixmedins_code: str, n: int, mapped_share: float, tag: str = ""
) -> tuple[HisItem, ...]:
    """n items of an institution's item master drawn from `cat` (deterministic by the
    institution's code), a `mapped_share` of them mapped; `tag` goes into every item code,
    so masters over different catalogs do not share codes."""
    seed = int(fixmedins_code[-3:]) + 7 * (fixmedins_code[1:7] == "440300")
    hosp = make_hospital_items(cat, n, seed=seed)
    mapped = hosp.mapped(mapped_share, seed=seed)
    rng = np.random.default_rng(seed)
    caps = cat.items["price_cap"]
    out = []
    for j, code in enumerate(hosp.hosp_code):
        cap = int(caps[hosp.true_index[j]])
        # Hospitals price near the cap; some above it (the part above is 超限价自费).
        base = cap if cap > 0 else int(rng.integers(500, 20_000))
        price = max(1, int(base * rng.choice([0.8, 0.95, 1.0, 1.0, 1.15])))
        out.append(
            HisItem(
                code=f"{fixmedins_code[-5:]}-{tag}{code}",
                name=hosp.name[j],
                spec=hosp.spec[j],
                price=price,
                mapped_to=hosp.true_code[j] if mapped[j] else "",
            )
        )
    return tuple(out)


def mappings(
    fixmedins_code: str, items: tuple[HisItem, ...] | None = None
) -> list[catalog_pb2.Mapping]:
    """The mappings (对照) of an item master (the institution's demo one by default)."""
    return [
        catalog_pb2.Mapping(
            medins_list_codg=h.code, med_list_codg=h.mapped_to, medins_list_name=h.name
        )
        for h in (his_items(fixmedins_code) if items is None else items)
        if h.mapped_to
    ]


def _person(
    n: int,
    name: str,
    *,
    gend: int,
    brdy: int,
    psn_type: int,
    insutype: int,
    retired: bool = False,
    cvlserv: bool = False,
    maf: bool = False,
    filed: bool = False,
    balc: int = 0,
    region: str = "440100",
    acc: list[catalog_pb2.Accumulator] | None = None,
) -> catalog_pb2.PersonRecord:
    psn_no = f"44010000{n:08d}"
    return catalog_pb2.PersonRecord(
        psn_no=psn_no,
        psn_name=name,
        psn_cert_no=f"440106{brdy:08d}{n:03d}{n % 10}",
        card_no=f"K{n:08d}",
        voucher=f"EV{n:016d}",
        gend=gend,
        brdy=brdy,
        psn_type=psn_type,
        insutype=insutype,
        insuplc_admdvs=region,
        cvlserv_flag=cvlserv,
        maf_flag=maf,
        retired=retired,
        cross_region=1 if filed else 0,
        balc=balc,
        accumulators=acc or [],
    )


def persons() -> list[catalog_pb2.PersonRecord]:
    """Named demo persons first (the scripted visit and the tests use them), then a crowd."""
    second_stay = catalog_pb2.Accumulator(
        year=YEAR,
        pool="inpatient",
        inpatient_count=1,
        dedc_paid=130_000,
        hifp_paid=1_200_000,
        hifp_base=1_500_000,
        critical_base=200_000,
    )
    named = [
        _person(
            1,
            "张建国",
            gend=1,
            brdy=19560312,
            psn_type=12,
            insutype=310,
            retired=True,
            balc=365_000,
        ),
        _person(2, "李秀英", gend=2, brdy=19850720, psn_type=11, insutype=310, balc=128_000),
        _person(
            3, "王芳", gend=2, brdy=19790105, psn_type=11, insutype=310, cvlserv=True, balc=96_000
        ),
        _person(4, "陈小明", gend=1, brdy=20150601, psn_type=31, insutype=390),
        _person(5, "刘桂兰", gend=2, brdy=19480930, psn_type=32, insutype=390, maf=True),
        _person(
            6,
            "赵强",
            gend=1,
            brdy=19700415,
            psn_type=11,
            insutype=310,
            balc=54_000,
            acc=[second_stay],
        ),
        _person(
            7, "周文", gend=1, brdy=19900822, psn_type=11, insutype=310, filed=True, balc=20_000
        ),
        _person(
            8,
            "吴海燕",
            gend=2,
            brdy=19620228,
            psn_type=12,
            insutype=310,
            retired=True,
            cvlserv=True,
            balc=410_000,
        ),
    ]
    return named + crowd(9, 200)


def crowd(first: int, count: int, seed: int = 44) -> list[catalog_pb2.PersonRecord]:
    """`count` persons numbered from `first`: employees (some retired, some civil servants)
    and residents (some on medical assistance), half of them cross-region filed. The demo
    set is `crowd(9, 200)`; the load kit draws larger populations from here."""
    rng = np.random.default_rng(seed)
    surnames = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
    given = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英华"
    out = []
    for n in range(first, first + count):
        employee = rng.random() < 0.6
        retired = employee and rng.random() < 0.3
        year = int(rng.integers(1940, 2000)) if employee else int(rng.integers(1935, 2024))
        out.append(
            _person(
                n,
                surnames[n % len(surnames)]
                + given[int(rng.integers(len(given)))]
                + given[n % len(given)],
                gend=1 + n % 2,
                brdy=year * 10000 + int(rng.integers(1, 13)) * 100 + int(rng.integers(1, 29)),
                psn_type=(12 if retired else 11) if employee else 31,
                insutype=310 if employee else 390,
                retired=retired,
                cvlserv=employee and rng.random() < 0.1,
                maf=not employee and rng.random() < 0.05,
                filed=rng.random() < 0.5,
                balc=int(rng.integers(0, 500_000)) if employee else 0,
            )
        )
    return out


# Every demo institution's operators: one per role, as a hospital separates the duties.
OPERATORS = (
    Operator("cashier01", "收费员甲", frozenset({roles.CASHIER})),
    Operator("super01", "收费主管乙", frozenset({roles.SUPERVISOR})),
    Operator("finance01", "财务丙", frozenset({roles.FINANCE})),
    Operator("admin01", "医保办丁", frozenset({roles.ADMIN})),
    Operator("security01", "信息科戊", frozenset({roles.SECURITY})),
)

log = logging.getLogger("medsettle")


# The demo operators' password: generated for each demo database and written beside it,
# readable by its owner only, for the scripted demo, the tests and the load kit to sign in
# with (never a fixed password: a demo server reachable by others is not open to anyone
# who has read this file).
PASSWORD_SUFFIX = ".demo-password"


def password_file(db: str | Path) -> Path:
    return Path(f"{db}{PASSWORD_SUFFIX}")


def read_password(db: str | Path) -> str:
    """The demo operators' password of the demo database `db`."""
    return password_file(db).read_text("utf-8").strip()


def _write_password(db: str, password: str) -> None:
    """`password` into the demo password file (mode 0600), replacing a stale one whole."""
    path = password_file(db)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    os.replace(tmp, path)


def seed(store: Store, vault: Vault) -> bool:
    """Load the demo data set through `store.write_sync` if the database has no
    institution yet; returns whether it did. The demo operators get a fresh password,
    written to `password_file(db)` first (a failed load leaves a file that matches nothing,
    never a database nobody can sign in to)."""

    def empty(conn: sqlite3.Connection) -> bool:
        return bool(conn.execute("SELECT COUNT(*) FROM institutions").fetchone()[0] == 0)

    if not store.read_sync(empty):
        return False
    now = now_ms()
    password = secrets.token_urlsafe(18)
    _write_password(store.path, password)
    # One hash for them all: they share the password anyway, and the KDF is slow.
    hashed = passwords.make(password)
    demo_operators = [replace(o, password_hash=hashed) for o in OPERATORS]

    def load(conn: sqlite3.Connection) -> None:
        reference.put_institutions(
            conn, catalog_pb2.PutInstitutionsRequest(institutions=INSTITUTIONS)
        )
        reference.put_policy(
            conn, catalog_pb2.PutPolicyRequest(format="toml", text=policy_text()), now
        )
        reference.import_catalog(conn, CATALOG_VERSION, catalog_items(), now)
        reference.put_persons(conn, vault, catalog_pb2.PutPersonsRequest(persons=persons()))
        for inst in INSTITUTIONS:
            code = inst.fixmedins_code
            rows = [
                (code, m.medins_list_codg, m.med_list_codg, m.medins_list_name)
                for m in mappings(code)
            ]
            conn.executemany("INSERT INTO mappings VALUES (?, ?, ?, ?)", rows)
        for inst in INSTITUTIONS:
            operators.put(conn, inst.fixmedins_code, demo_operators, now)
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'refdata_gen'")

    store.write_sync(load)
    return True


def seed_center(dsn: str, vault: Vault) -> bool:
    """Load institutions, the policy and the persons (with their opening accumulators) into
    an empty center database; returns whether it did."""
    import engine_rs
    from server.center.store.pg import connect

    with connect(dsn) as conn, conn.transaction():
        if conn.execute("SELECT COUNT(*) FROM institutions").fetchone()[0]:  # type: ignore[index]
            return False
        for i in INSTITUTIONS:
            conn.execute(
                "INSERT INTO institutions VALUES (%s, %s, %s, %s)",
                (i.fixmedins_code, i.fixmedins_name, i.hosp_lv, i.admdvs),
            )
        policy = engine_rs.Policy.from_toml(policy_text())
        conn.execute(
            "INSERT INTO policies VALUES (%s, %s, %s, %s, %s)",
            (policy.version, policy.id, policy.name, policy.to_json(), now_ms()),
        )
        now = now_ms()
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO catalog_items VALUES ({', '.join(['%s'] * 19)})",
                [(*catalog_row(it), CATALOG_VERSION, 0) for it in catalog_items()],
            )
        conn.execute(
            "INSERT INTO catalog_versions VALUES (%s, %s, %s)", (CATALOG_VERSION, now, CATALOG_SIZE)
        )
        for p in persons():
            conn.execute(persons_table.insert_sql("%s"), persons_table.record_row(vault, p, p.balc))
            for a in p.accumulators:
                values = [getattr(a, f) for f in ACC_FIELDS]
                conn.execute(
                    "INSERT INTO accumulators"
                    f" (psn_no, year, pool, opening, {', '.join(ACC_FIELDS)})"
                    f" VALUES (%s, %s, %s, 1, {', '.join(['%s'] * len(ACC_FIELDS))})",
                    (p.psn_no, a.year, a.pool, *values),
                )
    return True


def load(cfg: Config) -> None:
    """`serve --demo`: the demo data set into the role's empty database (after its
    migrations); a database that has data already is left alone."""
    vault = Vault(cfg.data_keys(), cfg.pii_cipher)
    if cfg.role is Role.CENTER:
        if seed_center(cfg.db, vault):
            log.info("demo persons and policy loaded into the center database")
        return
    store = Store(cfg.db, readers=1)
    try:
        if seed(store, vault):
            log.info("demo data set loaded into %s", cfg.db)
    finally:
        store.close()
