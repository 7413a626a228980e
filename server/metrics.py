"""Prometheus metrics of a medsettle server: the gRPC server conventions (the names
py-grpc-prometheus and go-grpc-prometheus use, which have no grpc.aio interceptor, so this
module has its own) and the business metrics of settling.

Several worker processes share the metrics through prometheus-client's multiprocess mode:
`server.config.prepare_metrics_dir` sets `PROMETHEUS_MULTIPROC_DIR` (emptied) before anything
imports prometheus_client (`medsettle serve` calls it before importing the server), every
process writes its own files there, and the parent alone serves `/metrics` (`serve_http`),
marking dead workers with `mark_dead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from medsettle.v1 import common_pb2, settlement_pb2
from server.handlers import WrappedOnce

# Fine enough for sub-millisecond calls (a Ping is ~0.2 ms), up to a 5,000-line stay.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,  # the load targets' p99 bound for an outpatient Settle
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_RPC = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _RPC)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status.",
    (*_RPC, "grpc_code"),
)
MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Stream messages received by the server.", _RPC
)
MSG_SENT = Counter("grpc_server_msg_sent_total", "Stream messages sent by the server.", _RPC)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from the call's start to its status, on the server.",
    _RPC,
    buckets=LATENCY_BUCKETS,
)

SETTLEMENTS = Counter(
    "medsettle_settlements_total",
    "Settle calls by settlement mode, server role, insurance type and outcome"
    " (settled, replayed, or the refusal's status code).",
    ("mode", "role", "insutype", "outcome"),
)
CANCELS = Counter(
    "medsettle_cancels_total",
    "CancelSettlement calls by mode, role and outcome.",
    ("mode", "role", "outcome"),
)
FUND_PAID = Counter(
    "medsettle_fund_paid_fen_total",
    "Amounts of committed settlements, in fen, by fund_pay_type (and acct_pay,"
    " psn_cash_pay); cancels are not subtracted (see medsettle_fund_cancelled_fen_total).",
    ("fund",),
)
FUND_CANCELLED = Counter(
    "medsettle_fund_cancelled_fen_total",
    "Amounts of cancelled settlements, in fen, by fund_pay_type (and acct_pay, psn_cash_pay).",
    ("fund",),
)
ENGINE_SECONDS = Histogram(
    "medsettle_engine_seconds",
    "Time in the Rust engine per call, by stage.",
    ("stage",),
    buckets=LATENCY_BUCKETS,
)
# How many calls or operations share one batch (a commit, a transaction, a call).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COMMIT_BATCH = Histogram(
    "medsettle_commit_batch_operations",
    "Operations sharing one group commit (one fsync) in the front-end's store.",
    buckets=BATCH_BUCKETS,
)
CENTER_SETTLE_BATCH = Histogram(
    "medsettle_center_settle_batch_calls",
    "Center-mode SettleSummary calls settled in one transaction at the center.",
    buckets=BATCH_BUCKETS,
)
CENTER_LINK_BATCH = Histogram(
    "medsettle_center_link_batch_settles",
    "Center-mode settles a front-end sent to its center in one SettleSummaries call.",
    buckets=BATCH_BUCKETS,
)
CENTER_SETTLE_FALLBACKS = Counter(
    "medsettle_center_settle_batch_fallbacks_total",
    "Batches of SettleSummary calls that failed whole and were settled call by call.",
)
REPLAYS = Counter(
    "medsettle_idempotent_replays_total",
    "Calls answered with the stored answer of their msgid (retries).",
    ("method",),
)
OUTBOX_BACKLOG = Gauge(
    "medsettle_outbox_backlog",
    "Settlements and cancels in the outbox not yet acknowledged by the center.",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_AGE = Gauge(
    "medsettle_outbox_oldest_age_seconds",
    "Age of the oldest unsent outbox row (0 when the outbox is empty).",
    multiprocess_mode="mostrecent",
)
CENTER_LINK_UP = Gauge(
    "medsettle_center_link_up",
    "1 when the last call to this center answered, 0 when it did not.",
    ("center",),
    multiprocess_mode="mostrecent",
)
REFDATA_VERSION = Gauge(
    "medsettle_refdata_version",
    "Version of the reference data in use, by kind (policy, catalog).",
    ("kind",),
    multiprocess_mode="mostrecent",
)
REFUSALS_SUMMARISED = Counter(
    "medsettle_refusals_summarised_total",
    "Refused calls beyond max_refusal_audits_per_s, by status code: counted here and in one"
    " summary audit record a second instead of a record each.",
    ("code",),
)
PEER_CALLS_REFUSED = Counter(
    "medsettle_peer_calls_refused_total",
    "Calls refused RESOURCE_EXHAUSTED because their peer address already had"
    " max_calls_per_peer calls in flight.",
)
STORE_WRITABLE = Gauge(
    "medsettle_store_writable",
    "1 while the store's writes commit; 0 from a failed write batch (disk full, I/O error:"
    " its callers were answered UNAVAILABLE) until a batch commits again.",
    multiprocess_mode="livemin",
)
STORE_FAILURES = Counter(
    "medsettle_store_failed_batches_total",
    "Write batches the store could not commit and rolled back (disk full, I/O error).",
)

Behavior = Callable[..., Any]


def serve_http(host: str, port: int) -> int:
    """Serve every process's metrics on `/metrics` from this process; returns the port."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def mark_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def initialise(services: Iterable[Any]) -> None:
    """Every method's series at zero, so a rate over them exists before the first call."""
    for service in services:
        for m in service.methods:
            labels = (_grpc_type(m.client_streaming, m.server_streaming), service.full_name, m.name)
            STARTED.labels(*labels)
            HANDLED.labels(*labels, "OK")
            MSG_RECEIVED.labels(*labels)
            MSG_SENT.labels(*labels)
            HANDLING.labels(*labels)


def _grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


class _Series:
    """One method's series, resolved once (label look-ups cost more than the increments)."""

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        labels = (grpc_type, service, method)
        self.labels = labels
        self.started = STARTED.labels(*labels)
        self.received = MSG_RECEIVED.labels(*labels)
        self.sent = MSG_SENT.labels(*labels)
        self.handling = HANDLING.labels(*labels)
        self._handled: dict[str, Any] = {}

    @contextlib.contextmanager
    def call(self, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
        """One call: started now, handled with the status it ends with, timed."""
        self.started.inc()
        t0 = time.perf_counter()
        exc: BaseException | None = None
        try:
            yield
        except BaseException as e:
            exc = e
            raise
        finally:
            code = _code(context, exc)
            handled = self._handled.get(code)
            if handled is None:
                handled = self._handled[code] = HANDLED.labels(*self.labels, code)
            handled.inc()
            self.handling.observe(time.perf_counter() - t0)


def _code(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status the call ends with: the one an abort set, else OK, CANCELLED (the client
    went away) or UNKNOWN (what grpc answers for an unhandled exception)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return "OK"
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by type, service, method and status code."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self._wrapped = WrappedOnce(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._wrapped(handler_call_details.method, handler)  # type: ignore[no-any-return]

    def _wrap(self, name: str, handler: Any) -> Any:
        series = self._series.get(name)
        if series is None:
            service, _, method = name.lstrip("/").rpartition("/")
            kind = _grpc_type(handler.request_streaming, handler.response_streaming)
            series = self._series[name] = _Series(kind, service, method)
        # grpc's handlers are namedtuples: `_replace` wraps a behavior
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=_unary(handler.unary_unary, series, streamed_in=False)
            )
        if handler.stream_unary is not None:
            return handler._replace(
                stream_unary=_unary(handler.stream_unary, series, streamed_in=True)
            )
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_stream_out(handler.unary_stream, series))
        return handler  # pragma: no cover - the contract has no bidirectional calls


def _unary(behavior: Behavior, s: _Series, *, streamed_in: bool) -> Behavior:
    async def counted_in(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for r in requests:
            s.received.inc()
            yield r

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with s.call(context):
            if streamed_in:
                request = counted_in(request)
            else:
                s.received.inc()
            response = await behavior(request, context)
            s.sent.inc()
            return response

    return call


def _stream_out(behavior: Behavior, s: _Series) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with s.call(context):
            s.received.inc()
            async for item in behavior(request, context):
                s.sent.inc()
                yield item

    return call


# ---------------------------------------------------------------------------- business
PREPROCESS = ENGINE_SECONDS.labels("preprocess")
SPLIT = ENGINE_SECONDS.labels("split")


def engine_time(preprocess_ns: int, split_ns: int) -> None:
    """The engine's time in one settlement's computation, as the ledger measured it."""
    PREPROCESS.observe(preprocess_ns / 1e9)
    SPLIT.observe(split_ns / 1e9)


def setl_info(response: bytes) -> common_pb2.SetlInfo:
    """The settlement in a stored answer (`SettleResponse` or `CenterSettleResponse`: both
    carry it as field 1)."""
    return settlement_pb2.SettleResponse.FromString(response).setlinfo


class Tally:
    """Settles and cancels counted, with their amounts, and added to the counters once a
    label when `flush`ed. An increment of a shared counter takes a lock and writes its
    file (about 3 us; a settle touches five or six): a batch of answers adds each label
    once (the center's `SettleSummaries`, the store's batches), one answer its labels once
    (the functions below, which use it so that each series' labels are laid out here only)."""

    def __init__(self) -> None:
        self._adds: dict[tuple[Any, ...], int] = {}

    def _add(self, key: tuple[Any, ...], n: int) -> None:
        self._adds[key] = self._adds.get(key, 0) + n

    def settle_answered(self, mode: str, role: str, response: bytes, replayed: bool) -> None:
        """A Settle answered (durably committed, or replayed): counted, and its amounts
        added per fund unless it is a replay."""
        info = setl_info(response)
        outcome = "replayed" if replayed else "settled"
        self._add((SETTLEMENTS, mode, role, str(info.insutype), outcome), 1)
        if not replayed:
            self._amounts(FUND_PAID, info)

    def settle_refused(self, mode: str, role: str, code: grpc.StatusCode) -> None:
        self._add((SETTLEMENTS, mode, role, "", code.name), 1)

    def cancel_answered(self, mode: str, role: str, response: bytes, replayed: bool) -> None:
        info = setl_info(response)
        self._add((CANCELS, mode, role, "replayed" if replayed else "cancelled"), 1)
        if not replayed:
            self._amounts(FUND_CANCELLED, info)

    def cancel_refused(self, mode: str, role: str, code: grpc.StatusCode) -> None:
        self._add((CANCELS, mode, role, code.name), 1)

    def _amounts(self, counter: Counter, info: common_pb2.SetlInfo) -> None:
        for leg in info.setldetail:
            if leg.fund_payamt:
                self._add((counter, leg.fund_pay_type), leg.fund_payamt)
        if info.acct_pay:
            self._add((counter, "acct_pay"), info.acct_pay)
        if info.psn_cash_pay:
            self._add((counter, "psn_cash_pay"), info.psn_cash_pay)

    def flush(self) -> None:
        adds, self._adds = self._adds, {}
        for (metric, *labels), n in adds.items():
            _child(metric, *labels).inc(n)


def settle_answered(mode: str, role: str, response: bytes, replayed: bool) -> None:
    tally = Tally()
    tally.settle_answered(mode, role, response, replayed)
    tally.flush()


def settle_refused(mode: str, role: str, code: grpc.StatusCode) -> None:
    tally = Tally()
    tally.settle_refused(mode, role, code)
    tally.flush()


def cancel_answered(mode: str, role: str, response: bytes, replayed: bool) -> None:
    tally = Tally()
    tally.cancel_answered(mode, role, response, replayed)
    tally.flush()


def cancel_refused(mode: str, role: str, code: grpc.StatusCode) -> None:
    tally = Tally()
    tally.cancel_refused(mode, role, code)
    tally.flush()


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Counter, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: the look-up costs more than the increment."""
    key = (id(metric), *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child
