"""Server limits against hostile or careless callers, on a real front-end: a call without a
deadline, or with one beyond the server's cap, is INVALID_ARGUMENT and writes nothing; an
oversize message is RESOURCE_EXHAUSTED and other callers go on; a flood of open streams on
one connection is held to the per-connection limit while another connection is served; an
anonymous fee stream is refused on its first message, the rest never read; and one peer
address beyond its calls in flight is RESOURCE_EXHAUSTED while its calls within are served."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from medsettle.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    settlement_pb2,
    settlement_pb2_grpc,
)
from server.demo.localserver import LocalServer, free_port
from tests.harness import ALL_ROLES, INST_A, RETIRED, client, lines, snapshot

STREAMS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    d = tmp_path_factory.mktemp("hostile")
    s = LocalServer(
        d / "h.db",
        extra=["--metrics-port", str(mport := free_port())],
        env={
            "MEDSETTLE_MAX_MESSAGE_BYTES": str(256 * 1024),
            "MEDSETTLE_MAX_STREAMS_PER_CONNECTION": str(STREAMS),
            "MEDSETTLE_MAX_DEADLINE_S": "120",
        },
        log=d / "h.log",
    ).start()
    s.metrics_url = f"http://127.0.0.1:{mport}/metrics"  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()


def visits(server: LocalServer) -> int:
    with sqlite3.connect(server.db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM visits").fetchone()[0])


def register_request(sign_no: str, msgid: str) -> settlement_pb2.RegisterRequest:
    return settlement_pb2.RegisterRequest(
        header=common_pb2.RequestHeader(
            msgid=msgid, fixmedins_code=INST_A, opter=ALL_ROLES, sign_no=sign_no
        ),
        psn_no=RETIRED.psn_no,
        insutype=RETIRED.insutype,
        med_type=11,
        begndate=20260615,
        ipt_otp_no="H1",
    )


@pytest.mark.parametrize(("timeout", "says"), [(None, "needs one"), (3600.0, "more than")])
def test_calls_need_a_bounded_deadline(
    server: LocalServer, timeout: float | None, says: str
) -> None:
    sign_no = client(server).sign_no
    before = visits(server)
    with grpc.insecure_channel(server.target) as ch:
        stub = settlement_pb2_grpc.SettlementStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Register(register_request(sign_no, f"DL{timeout}"), timeout=timeout)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (err.value.details() or "")
        assert visits(server) == before
        stub.Register(register_request(sign_no, f"DL-ok{timeout}"), timeout=10)  # with one: served
    assert visits(server) == before + 1


def test_oversize_message_is_refused_and_others_go_on(server: LocalServer) -> None:
    c = client(server)
    v = c.register(
        RETIRED.psn_no, insutype=RETIRED.insutype, med_type=11, begndate=20260615, ipt_otp_no="O1"
    )
    big = lines(6000, seed=3)  # ~300 KB, over the 256 KB limit
    with grpc.insecure_channel(server.target) as ch:
        stub = settlement_pb2_grpc.SettlementStub(ch)
        req = settlement_pb2.UploadFeesRequest(header=c.header("BIG1"), mdtrt_id=v.mdtrt_id)
        req.lines.extend(big)
        assert req.ByteSize() > 256 * 1024
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadFees(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    done = c.upload_fees(v.mdtrt_id, big[:10])  # the same caller, a sane message
    assert done.visit_line_count == 10


def _count(server: LocalServer, series: str, method: str, code: str = "") -> float:
    """A counter of `method` from the server's /metrics, summed (over codes unless one is
    given)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(series + "{")
        and f'grpc_method="{method}"' in line
        and (not code or f'grpc_code="{code}"' in line)
    )


def _started(server: LocalServer, method: str) -> float:
    return _count(server, "grpc_server_started_total", method)


def _handled(server: LocalServer, method: str, code: str) -> float:
    return _count(server, "grpc_server_handled_total", method, code)


def test_stream_flood_is_held_to_the_connection_limit(server: LocalServer) -> None:
    c = client(server)
    v = c.register(
        RETIRED.psn_no, insutype=RETIRED.insutype, med_type=11, begndate=20260615, ipt_otp_no="F1"
    )
    base = _started(server, "StreamFees")

    async def flood() -> None:
        release = asyncio.Event()

        async def held(
            i: int,
        ) -> AsyncIterator[
            settlement_pb2.UploadFeesRequest
        ]:  # a first message, then nothing until released
            yield settlement_pb2.UploadFeesRequest(
                header=c.header(f"FLOOD{i}"), mdtrt_id=v.mdtrt_id, lines=lines(1, seed=i)
            )
            await release.wait()

        own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, not shared
        async with grpc.aio.insecure_channel(server.target, options=own) as ch:
            stub = settlement_pb2_grpc.SettlementStub(ch)
            calls = [stub.StreamFees(held(i), timeout=60) for i in range(5 * STREAMS)]
            await asyncio.sleep(2.0)
            # The server took at most its limit of streams from this one connection ...
            assert _started(server, "StreamFees") - base <= STREAMS
            # ... and another connection is served meanwhile.
            async with grpc.aio.insecure_channel(server.target, options=own) as other:
                pong = await settlement_pb2_grpc.SettlementStub(other).Ping(
                    settlement_pb2.PingRequest(), timeout=5
                )
                assert pong is not None
            release.set()
            await asyncio.gather(*calls, return_exceptions=True)
        # Once released, the flood drains: every stream was taken and answered by the
        # server, none with INTERNAL (the streams share one visit, so most are refused as
        # client errors; the client library may then report its own late send as INTERNAL,
        # which is why the server's counters are asked, not the client's).
        taken = _started(server, "StreamFees") - base
        assert STREAMS < taken <= 5 * STREAMS  # the queued streams were taken in turn
        assert _handled(server, "StreamFees", "") == _started(server, "StreamFees")
        assert _handled(server, "StreamFees", "INTERNAL") == 0

    asyncio.run(flood())


def _fee_message(
    header: common_pb2.RequestHeader | None, mdtrt_id: str, sn: str, n: int = 1
) -> settlement_pb2.UploadFeesRequest:
    ls = lines(n, seed=7)
    for i, ln in enumerate(ls):
        ln.feedetl_sn = f"{sn}{i}"
    msg = settlement_pb2.UploadFeesRequest(mdtrt_id=mdtrt_id, lines=ls)
    if header is not None:
        msg.header.CopyFrom(header)
    return msg


def test_anonymous_streams_are_refused_on_their_first_message(server: LocalServer) -> None:
    """Eight streams with a sign_no never issued (six of fees, two of a catalog), each of 50
    messages of 1,000 lines or items: each is UNAUTHENTICATED after its first message, and
    the server never asks for the second (the client's generator holds it back until the
    call is over: a server that read on would wait for it, then take all 50)."""
    c = client(server)
    mdtrt_id = c.register(
        RETIRED.psn_no, insutype=RETIRED.insutype, med_type=11, begndate=20260615, ipt_otp_no="A1"
    ).mdtrt_id
    header = c.header("ANON-1")
    header.sign_no = "0" * 32
    before = snapshot(server.db)

    def fees(i: int, k: int) -> settlement_pb2.UploadFeesRequest:
        return _fee_message(header if i == 0 else None, mdtrt_id, f"A{k}-{i}-", 1000)

    def catalog(i: int, k: int) -> catalog_pb2.CatalogChunk:
        items = [catalog_pb2.CatalogItem(med_list_codg=f"X{k}-{i}-{j}") for j in range(1000)]
        return catalog_pb2.CatalogChunk(header=header if i == 0 else None, version=9, items=items)

    async def one(call: Any, message: Any, k: int) -> tuple[int, grpc.StatusCode]:
        sent = 0
        over = asyncio.Event()

        async def chunks() -> AsyncIterator[Any]:
            nonlocal sent
            for i in range(50):
                if i == 1:  # the rest only once the call is over (or after a long wait)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(over.wait(), 30)
                sent += 1
                yield message(i, k)

        try:
            await call(chunks(), timeout=60)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
        finally:
            over.set()
        return sent, code

    async def eight() -> list[tuple[int, grpc.StatusCode]]:
        async with grpc.aio.insecure_channel(server.target) as ch:
            upload = settlement_pb2_grpc.SettlementStub(ch).StreamFees
            load = catalog_pb2_grpc.CatalogStub(ch).ImportCatalog
            streams = [one(upload, fees, k) for k in range(6)]
            streams += [one(load, catalog, k) for k in range(2)]
            return await asyncio.gather(*streams)

    assert asyncio.run(eight()) == [(1, grpc.StatusCode.UNAUTHENTICATED)] * 8
    assert snapshot(server.db) == before


def lines_stored(server: LocalServer) -> int:
    with sqlite3.connect(server.db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM fee_lines").fetchone()[0])


PER_PEER = 4


def test_calls_beyond_a_peers_cap_are_refused_and_those_within_served(tmp_path: Path) -> None:
    """max_calls_per_peer = 4: with four fee streams of one address held open (over two
    connections, so the per-connection limit is not what stops them), a fifth call from
    that address is RESOURCE_EXHAUSTED; the four are then served, and so is the next."""
    env = {"MEDSETTLE_MAX_CALLS_PER_PEER": str(PER_PEER)}
    with LocalServer(tmp_path / "p.db", env=env, log=tmp_path / "p.log") as s:
        c = client(s)
        mdtrt_id = c.register(
            RETIRED.psn_no,
            insutype=RETIRED.insutype,
            med_type=11,
            begndate=20260615,
            ipt_otp_no="P1",
        ).mdtrt_id

        async def run() -> tuple[list[Any], grpc.StatusCode]:
            release = asyncio.Event()

            async def held(k: int) -> AsyncIterator[settlement_pb2.UploadFeesRequest]:
                yield _fee_message(c.header(f"PEER-{k}"), mdtrt_id, f"P{k}-")
                await release.wait()

            own = [("grpc.use_local_subchannel_pool", 1)]
            async with (
                grpc.aio.insecure_channel(s.target, options=own) as ch1,
                grpc.aio.insecure_channel(s.target, options=own) as ch2,
            ):
                stubs = [settlement_pb2_grpc.SettlementStub(ch) for ch in (ch1, ch2)]
                calls = [stubs[k % 2].StreamFees(held(k), timeout=60) for k in range(PER_PEER)]
                refused = grpc.StatusCode.OK
                for _ in range(600):  # until all four are in flight at the server
                    try:
                        await stubs[0].Ping(settlement_pb2.PingRequest(), timeout=5)
                    except grpc.aio.AioRpcError as err:
                        refused = err.code()
                        break
                    await asyncio.sleep(0.05)
                release.set()
                answers = await asyncio.gather(*calls, return_exceptions=True)
                await stubs[1].Ping(settlement_pb2.PingRequest(), timeout=5)  # served again
            return answers, refused

        answers, refused = asyncio.run(run())
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert all(isinstance(a, settlement_pb2.UploadFeesResponse) for a in answers), answers
        assert lines_stored(s) >= PER_PEER
        c.close()
