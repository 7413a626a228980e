"""Prometheus metrics of a running front-end with two worker processes: the gRPC series of
every method exist at zero before the first call, calls are counted by status code, the
business counters follow the settlements (replays counted once, money per fund in fen), the
exposition passes `promtool check metrics`, a real Prometheus server scraping it sees a
non-zero rate of handled Settle calls, and the self-protection series (store writable, calls
over a peer's cap) are there from the start."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from clients.sdk import MedsettleClient, MedsettleError
from medsettle.v1 import common_pb2
from server import metrics
from server.demo.localserver import LocalServer, free_port
from tests.harness import DAY, EMPLOYEE, RETIRED, admit, client, lines, total

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, int]]:
    tmp = tmp_path_factory.mktemp("metrics")
    port = free_port()
    server = LocalServer(
        tmp / "m.db",
        port=free_port(),
        workers=2,
        extra=["--metrics-port", str(port)],
        env={"MEDSETTLE_METRICS_DIR": str(tmp / "prom")},
        log=tmp / "server.log",
    ).start()
    try:
        yield server, port
    finally:
        server.stop()


def exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return bytes(r.read()).decode()


def scrape(port: int) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(exposition(port)):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much `name` grew between two scrapes, over every series with these labels (and
    any others)."""
    want = set(labels.items())
    return sum(
        v - before.get(key, 0.0) for key, v in after.items() if key[0] == name and want <= key[1]
    )


def money_of(infos: Iterable[common_pb2.SetlInfo]) -> dict[str, int]:
    """What the settlements paid, per fund as the business metrics label it, in fen."""
    paid: dict[str, int] = {}
    for info in infos:
        for leg in info.setldetail:
            paid[leg.fund_pay_type] = paid.get(leg.fund_pay_type, 0) + leg.fund_payamt
        paid["acct_pay"] = paid.get("acct_pay", 0) + info.acct_pay
        paid["psn_cash_pay"] = paid.get("psn_cash_pay", 0) + info.psn_cash_pay
    return {fund: fen for fund, fen in paid.items() if fen}


def rpc(method: str, service: str = "medsettle.v1.Settlement", **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": service, "grpc_method": method, **more}


def test_calls_codes_and_money_are_counted(served: tuple[LocalServer, int]) -> None:
    server, port = served
    before = scrape(port)
    # Every method's series exist before any call to it.
    for method in ("Reverse", "QuerySettlements", "DeleteFees", "Ping"):
        assert ("grpc_server_started_total", frozenset(rpc(method).items())) in before
        key = ("grpc_server_handled_total", frozenset(rpc(method, grpc_code="OK").items()))
        assert before[key] == 0
    assert (
        "grpc_server_started_total",
        frozenset(rpc("Totals", "medsettle.v1.Reconciliation").items()),
    ) in before
    assert (
        "grpc_server_msg_received_total",
        frozenset({**rpc("StreamFees"), "grpc_type": "client_stream"}.items()),
    ) in before

    c = client(server)
    m1, ls1 = admit(c, RETIRED, n_lines=10, seed=81, med_type=11)
    m2, ls2 = admit(c, EMPLOYEE, n_lines=12, seed=82, med_type=11)
    first = c.settle(m1, RETIRED.psn_no, medfee_sumamt=total(ls1), msgid="MET-1").setlinfo
    again = c.settle(m1, RETIRED.psn_no, medfee_sumamt=total(ls1), msgid="MET-1").setlinfo
    assert again == first  # a retry: answered from the idempotency record
    second = c.settle(m2, EMPLOYEE.psn_no, medfee_sumamt=total(ls2), acct_used=True).setlinfo
    with pytest.raises(MedsettleError):
        c.settle(m2, EMPLOYEE.psn_no, medfee_sumamt=total(ls2))  # already settled
    with pytest.raises(MedsettleError):
        c.settle("M_NO_SUCH_VISIT", EMPLOYEE.psn_no, medfee_sumamt=1)
    for _ in range(3):
        c.ping()
    stay = c.register(
        EMPLOYEE.psn_no, insutype=EMPLOYEE.insutype, med_type=11, begndate=DAY, ipt_otp_no="S1"
    )
    c.stream_fees(stay.mdtrt_id, lines(10, seed=84), chunk=4)  # three messages
    after = scrape(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("grpc_server_handled_total", **rpc("Settle", grpc_code="OK")) == 3
    assert grew("grpc_server_handled_total", **rpc("Settle", grpc_code="FAILED_PRECONDITION")) == 1
    assert grew("grpc_server_handled_total", **rpc("Settle", grpc_code="NOT_FOUND")) == 1
    assert grew("grpc_server_started_total", **rpc("Settle")) == 5
    assert grew("grpc_server_handled_total", **rpc("Ping", grpc_code="OK")) == 3
    assert grew("grpc_server_handling_seconds_count", **rpc("Settle")) == 5
    # A client stream counts each message it received.
    stream = {**rpc("StreamFees"), "grpc_type": "client_stream"}
    assert grew("grpc_server_msg_received_total", **stream) == 3
    assert grew("grpc_server_handled_total", **stream, grpc_code="OK") == 1

    settled = {"mode": "local", "role": "frontend", "insutype": "310"}
    assert grew("medsettle_settlements_total", **settled, outcome="settled") == 2
    assert grew("medsettle_settlements_total", **settled, outcome="replayed") == 1
    refused = {"mode": "local", "role": "frontend", "insutype": ""}
    assert grew("medsettle_settlements_total", **refused, outcome="FAILED_PRECONDITION") == 1
    assert grew("medsettle_settlements_total", **refused, outcome="NOT_FOUND") == 1
    assert grew("medsettle_idempotent_replays_total", method="Settle") == 1
    # Money per fund, in fen, once per settlement (the replay adds nothing).
    for fund, fen in money_of([first, second]).items():
        assert grew("medsettle_fund_paid_fen_total", fund=fund) == fen, fund
    # 2 uploads, 2 settles, the stream (the refused settles stop before the engine)
    assert grew("medsettle_engine_seconds_count", stage="preprocess") == 5
    assert grew("medsettle_engine_seconds_count", stage="split") == 2
    assert grew("medsettle_commit_batch_operations_count") >= 4
    policy = c.get_policy()
    assert value(after, "medsettle_refdata_version", kind="policy") == policy.version


def test_cancel_counts_the_amounts_it_takes_back(served: tuple[LocalServer, int]) -> None:
    server, port = served
    c = client(server)
    m, ls = admit(c, RETIRED, n_lines=8, seed=83, med_type=11)
    info = c.settle(m, RETIRED.psn_no, medfee_sumamt=total(ls)).setlinfo
    before = scrape(port)
    c.cancel_settlement(info.setl_id)
    after = scrape(port)
    cancelled = {"mode": "local", "role": "frontend", "outcome": "cancelled"}
    assert (
        value(after, "medsettle_cancels_total", **cancelled)
        - value(before, "medsettle_cancels_total", **cancelled)
        == 1
    )
    cash = "medsettle_fund_cancelled_fen_total"
    assert (
        value(after, cash, fund="psn_cash_pay") - value(before, cash, fund="psn_cash_pay")
        == info.psn_cash_pay
    )


def test_the_self_protection_series_exist_from_the_start(served: tuple[LocalServer, int]) -> None:
    """Both workers' stores can write, and the counters of failed batches and of calls over
    a peer's cap exist at zero, so their rates work before the first."""
    _, port = served
    samples = scrape(port)
    assert samples[("medsettle_store_writable", frozenset())] == 1.0
    assert samples[("medsettle_store_failed_batches_total", frozenset())] == 0.0
    assert samples[("medsettle_peer_calls_refused_total", frozenset())] == 0.0


def test_promtool_accepts_the_exposition(served: tuple[LocalServer, int], tmp_path: Path) -> None:
    _, port = served
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(port),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_sees_a_rate_of_settles(served: tuple[LocalServer, int], tmp_path: Path) -> None:
    server, port = served
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: medsettle\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    web = free_port()
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    stop = threading.Event()

    def settle_load(c: MedsettleClient) -> None:
        seed = 100
        while not stop.is_set():
            m, ls = admit(c, RETIRED, n_lines=5, seed=seed, med_type=11)
            c.settle(m, RETIRED.psn_no, medfee_sumamt=total(ls))
            seed += 1
            time.sleep(0.05)

    worker = threading.Thread(target=settle_load, args=(client(server),), daemon=True)
    worker.start()

    def ask(query: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=5) as r:
            answer: dict[str, Any] = json.load(r)
        return answer

    query = 'sum(rate(grpc_server_handled_total{grpc_method="Settle",grpc_code="OK"}[5s]))'
    rate = 0.0
    bad: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                answer = ask(query)
            except OSError:
                continue  # not listening yet
            result = answer["data"]["result"]
            if result and float(result[0]["value"][1]) > 0:
                rate = float(result[0]["value"][1])
                break
        # Every query of the Grafana dashboard is valid PromQL to this Prometheus.
        for expr in dashboard_queries():
            answer = ask(expr)
            if answer.get("status") != "success":
                bad.append(f"{expr}: {answer}")
    finally:
        stop.set()
        worker.join(timeout=30)
        prom.terminate()
        prom.wait(timeout=30)
    assert rate > 0, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert not bad


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "monitoring" / "grafana-dashboard.json"


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_dashboard_names_only_metrics_the_server_defines() -> None:
    defined = {
        m._name for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)
    }
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for expr in dashboard_queries()
        for name in re.findall(r"\b(?:grpc_server|medsettle)_[a-z_]+", expr)
    }
    assert used and used <= defined, used - defined
    # and the panels cover what an operator watches first
    assert {
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "medsettle_fund_paid_fen",
        "medsettle_outbox_backlog",
    } <= used
