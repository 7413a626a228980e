"""The Catalog service against a real front-end over SQLite: importing a new catalog version
(its changed and retired counts, what DownloadCatalog then returns, settlements priced with
the new caps), hospital-to-insurance mappings (adding, deleting, per institution), candidate
matching for hospital items, policy versions, and byte-identical idempotent retries."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from clients.sdk import MedsettleClient
from medsettle.v1 import catalog_pb2, settlement_pb2
from server.demo import dataset as demo_data
from server.demo.localserver import LocalServer
from server.demo.synth.catalog import make_hospital_items
from tests.harness import DAY, EMPLOYEE, INST_A, INST_B, client, snapshot

V1 = demo_data.CATALOG_VERSION
V2 = V1 + 1
DROPPED = 4  # items left out of version 2 (so retired in it)


def plain_capped_item() -> tuple[demo_data.HisItem, catalog_pb2.CatalogItem]:
    """A mapped hospital item of INST_A whose insurance item is a class A drug with a price
    cap at or above the hospital's price and no restriction, so nothing but the cap decides
    its over-the-cap part."""
    items = {it.med_list_codg: it for it in demo_data.catalog_items()}
    for h in demo_data.his_items(INST_A):
        it = items.get(h.mapped_to)
        if (
            it is not None
            and it.kind in (1, 2)
            and it.chrgitm_lv == 1
            and it.hilist_pric_uplmt_amt >= h.price >= 100
            and not (it.inpatient_only or it.sex or it.age_min or it.age_max or it.diagnoses)
            and it.begndate <= DAY
            and (it.enddate == 0 or it.enddate >= DAY)
            and not any(r.ratio_bp for r in it.selfpay_prop)
        ):
            return h, it
    raise AssertionError("the demo data set has no plain capped item")


def version_2(new_caps: dict[str, int]) -> list[catalog_pb2.CatalogItem]:
    """The demo catalog with some price caps changed and its last DROPPED items left out."""
    items = demo_data.catalog_items()[:-DROPPED]
    for it in items:
        if it.med_list_codg in new_caps:
            it.hilist_pric_uplmt_amt = new_caps[it.med_list_codg]
    return items


def changed_caps(n: int = 3) -> dict[str, int]:
    """n items whose cap is lowered: the plain capped item first, then the next capped ones."""
    _, plain = plain_capped_item()
    caps = {plain.med_list_codg: plain.hilist_pric_uplmt_amt // 3}
    for it in demo_data.catalog_items():
        if len(caps) == n:
            break
        if it.hilist_pric_uplmt_amt > 10 and it.med_list_codg not in caps:
            caps[it.med_list_codg] = it.hilist_pric_uplmt_amt - 10
    return caps


def fee_line(sn: str, his: demo_data.HisItem, units: int = 1) -> settlement_pb2.FeeLine:
    return settlement_pb2.FeeLine(
        feedetl_sn=sn,
        medins_list_codg=his.code,
        cnt=units * 10_000,
        pric=his.price,
        det_item_fee_sumamt=his.price * units,
        fee_ocur_date=DAY,
    )


def outpatient(c: MedsettleClient, no: str) -> str:
    return c.register(
        EMPLOYEE.psn_no, insutype=EMPLOYEE.insutype, med_type=11, begndate=DAY, ipt_otp_no=no
    ).mdtrt_id


def downloaded(c: MedsettleClient, since: int) -> list[catalog_pb2.CatalogItem]:
    return [it for chunk in c.download_catalog(since) for it in chunk.items]


@pytest.fixture
def a(frontend: LocalServer) -> Iterator[MedsettleClient]:
    with client(frontend, INST_A) as c:
        yield c


@pytest.fixture
def b(frontend: LocalServer) -> Iterator[MedsettleClient]:
    with client(frontend, INST_B) as c:
        yield c


# ---------------------------------------------------------------------------- versions
def test_import_counts_changed_and_retired_items(a: MedsettleClient) -> None:
    caps = changed_caps()
    resp = a.import_catalog(V2, version_2(caps))

    assert resp.version == V2
    assert resp.item_count == demo_data.CATALOG_SIZE - DROPPED
    assert resp.changed == len(caps)
    assert resp.retired == DROPPED


def test_download_since_returns_the_changes_of_later_versions(a: MedsettleClient) -> None:
    caps = changed_caps()
    dropped = {it.med_list_codg for it in demo_data.catalog_items()[-DROPPED:]}
    a.import_catalog(V2, version_2(caps))

    chunks = a.download_catalog(V1)
    assert chunks and all(ch.version == V2 for ch in chunks)
    since_v1 = {it.med_list_codg: it for ch in chunks for it in ch.items}
    assert set(since_v1) == set(caps) | dropped
    assert all(it.ver == V2 for it in since_v1.values())
    assert {code for code, it in since_v1.items() if it.retired} == dropped
    for code, cap in caps.items():
        assert since_v1[code].hilist_pric_uplmt_amt == cap

    everything = downloaded(a, 0)
    assert len(everything) == demo_data.CATALOG_SIZE
    assert {it.med_list_codg for it in everything if it.retired} == dropped
    assert {it.ver for it in everything} == {V1, V2}
    assert downloaded(a, V2) == []


def test_settlement_after_import_uses_the_new_price_caps(a: MedsettleClient) -> None:
    his, item = plain_capped_item()
    mdtrt_id = outpatient(a, "MZ-CAP")
    up = a.upload_fees(mdtrt_id, [fee_line("1", his)])
    assert up.results[0].med_list_codg == item.med_list_codg
    assert up.results[0].overlmt_amt == 0
    before = a.pre_settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=his.price).setlinfo
    assert (before.catalog_version, before.overlmt_amt) == (V1, 0)

    caps = changed_caps()
    a.import_catalog(V2, version_2(caps))

    after = a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=his.price).setlinfo
    assert after.catalog_version == V2
    assert after.overlmt_amt == his.price - caps[item.med_list_codg]
    assert after.overlmt_amt > 0


# ---------------------------------------------------------------------------- mappings
def test_mapping_an_unmapped_item_then_deleting_it(a: MedsettleClient, b: MedsettleClient) -> None:
    unmapped = next(h for h in demo_data.his_items(INST_A) if not h.mapped_to)
    _, target = plain_capped_item()
    mdtrt_id = outpatient(a, "MZ-MAP")
    first = a.upload_fees(mdtrt_id, [fee_line("1", unmapped)]).results[0]
    assert (first.chrgitm_lv, first.med_list_codg) == (0, "")

    mapped = a.put_mappings(
        [
            catalog_pb2.Mapping(
                medins_list_codg=unmapped.code,
                med_list_codg=target.med_list_codg,
                medins_list_name=unmapped.name,
            )
        ]
    )
    assert mapped.applied == 1
    assert mapped.mapping_count == len(demo_data.mappings(INST_A)) + 1
    second = a.upload_fees(mdtrt_id, [fee_line("2", unmapped)]).results[0]
    assert second.chrgitm_lv == target.chrgitm_lv != 0
    assert second.med_list_codg == target.med_list_codg

    # Institution B's mappings are its own: A's new mapping does not map B's line.
    b_visit = outpatient(b, "MZ-B")
    in_b = b.upload_fees(b_visit, [fee_line("1", unmapped)]).results[0]
    assert (in_b.chrgitm_lv, in_b.med_list_codg) == (0, "")

    deleted = a.put_mappings([catalog_pb2.Mapping(medins_list_codg=unmapped.code, delete=True)])
    assert deleted.mapping_count == len(demo_data.mappings(INST_A))
    third = a.upload_fees(mdtrt_id, [fee_line("3", unmapped)]).results[0]
    assert (third.chrgitm_lv, third.med_list_codg) == (0, "")


def test_mappings_of_one_institution_leave_the_other_alone(
    a: MedsettleClient, b: MedsettleClient
) -> None:
    """A remaps one of B's mapped hospital codes elsewhere: B's lines still map as before."""
    b_item = next(h for h in demo_data.his_items(INST_B) if h.mapped_to)
    _, elsewhere = plain_capped_item()
    assert elsewhere.med_list_codg != b_item.mapped_to
    a.put_mappings(
        [catalog_pb2.Mapping(medins_list_codg=b_item.code, med_list_codg=elsewhere.med_list_codg)]
    )

    in_b = b.upload_fees(outpatient(b, "MZ-B"), [fee_line("1", b_item)]).results[0]
    assert in_b.med_list_codg == b_item.mapped_to
    in_a = a.upload_fees(outpatient(a, "MZ-A"), [fee_line("1", b_item)]).results[0]
    assert in_a.med_list_codg == elsewhere.med_list_codg


# ---------------------------------------------------------------------------- matching
def test_match_items_ranks_the_true_item_first(a: MedsettleClient) -> None:
    his = demo_data.his_items(INST_A)
    # The item master keeps name and spec; its full rendering (form, maker) comes from the
    # same generator with the same seed, so the query is what the HIS item record holds.
    full = make_hospital_items(demo_data.catalog(), demo_data.HOSPITAL_ITEMS, seed=1)
    assert full.name == [h.name for h in his] and full.spec == [h.spec for h in his]
    picked = [j for j, h in enumerate(his) if h.mapped_to][:20]
    query = [
        catalog_pb2.HospitalItem(
            name=full.name[j],
            spec=full.spec[j],
            dosage_form=full.dosage_form[j],
            manufacturer=full.manufacturer[j],
        )
        for j in picked
    ]

    results = a.match_items(query).results

    assert len(results) == len(picked)
    for r in results:
        assert 1 <= len(r.candidates) <= 5
        scores = [c.score for c in r.candidates]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    hits = sum(
        r.candidates[0].med_list_codg == his[j].mapped_to
        for j, r in zip(picked, results, strict=True)
    )
    assert hits >= 15


# ---------------------------------------------------------------------------- policy
def test_put_policy_adds_a_version_and_keeps_the_old_one(a: MedsettleClient) -> None:
    old = a.get_policy(0)
    text = (
        demo_data.policy_text()
        .replace("version = 2026_01", "version = 2026_02", 1)
        .replace("ratio_bp = 8500", "ratio_bp = 8000", 1)
    )

    put = a.put_policy(text)

    assert put.version == 202602 > old.version == 202601
    current = a.get_policy(0)
    assert current == put
    assert json.loads(current.canonical_json)["rules"][0]["basic"]["bands"][0]["ratio_bp"] == 8000
    again = a.get_policy(old.version)
    assert again == old
    assert json.loads(again.canonical_json)["rules"][0]["basic"]["bands"][0]["ratio_bp"] == 8500
    his, _ = plain_capped_item()
    mdtrt_id = outpatient(a, "MZ-POL")
    a.upload_fees(mdtrt_id, [fee_line("1", his)])
    setl = a.settle(mdtrt_id, EMPLOYEE.psn_no, medfee_sumamt=his.price).setlinfo
    assert setl.policy_version == 202602


# ---------------------------------------------------------------------------- retries
def test_import_catalog_retry_returns_the_same_bytes(
    frontend: LocalServer, a: MedsettleClient
) -> None:
    items = version_2(changed_caps())
    call: grpc.StreamUnaryMultiCallable[catalog_pb2.CatalogChunk, bytes] = a.channel.stream_unary(
        "/medsettle.v1.Catalog/ImportCatalog",
        request_serializer=catalog_pb2.CatalogChunk.SerializeToString,
    )
    msgid = a.new_msgid()

    def send() -> bytes:
        head = catalog_pb2.CatalogChunk(header=a.header(msgid), version=V2, items=items[:1500])
        rest = catalog_pb2.CatalogChunk(version=V2, items=items[1500:])
        return call(iter([head, rest]), timeout=30)

    first = send()
    assert catalog_pb2.ImportCatalogResponse.FromString(first).version == V2
    rows = snapshot(frontend.db)
    assert send() == first
    assert snapshot(frontend.db) == rows
    a.sign_in()  # a retry after signing in again is still the same request
    rows = snapshot(frontend.db)
    assert send() == first
    assert snapshot(frontend.db) == rows


def test_put_mappings_retry_returns_the_same_bytes(
    frontend: LocalServer, a: MedsettleClient
) -> None:
    unmapped = next(h for h in demo_data.his_items(INST_A) if not h.mapped_to)
    _, target = plain_capped_item()
    call: grpc.UnaryUnaryMultiCallable[catalog_pb2.PutMappingsRequest, bytes] = (
        a.channel.unary_unary(
            "/medsettle.v1.Catalog/PutMappings",
            request_serializer=catalog_pb2.PutMappingsRequest.SerializeToString,
        )
    )
    msgid = a.new_msgid()
    mapping = catalog_pb2.Mapping(
        medins_list_codg=unmapped.code, med_list_codg=target.med_list_codg
    )

    def send() -> bytes:
        req = catalog_pb2.PutMappingsRequest(header=a.header(msgid), mappings=[mapping])
        return call(req, timeout=10)

    first = send()
    resp = catalog_pb2.PutMappingsResponse.FromString(first)
    assert (resp.applied, resp.mapping_count) == (1, len(demo_data.mappings(INST_A)) + 1)
    rows = snapshot(frontend.db)
    assert send() == first
    assert snapshot(frontend.db) == rows
    a.sign_in()  # a retry after signing in again is still the same request
    rows = snapshot(frontend.db)
    assert send() == first
    assert snapshot(frontend.db) == rows
