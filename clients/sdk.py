"""The Python SDK a HIS or a front-end uses to call medsettle.

    client = MedsettleClient("127.0.0.1:50051", fixmedins_code="H44010100001",
                             opter="cashier01", password=password)
    client.sign_in()
    person = client.get_person("02", "440106195603120011")
    visit = client.register(person.psn_no, insutype=310, med_type=21, begndate=20260615,
                            ipt_otp_no="ZY0001", dise_codg=["I21.9"])
    client.stream_fees(visit.mdtrt_id, lines)
    slip = client.settle(visit.mdtrt_id, person.psn_no, medfee_sumamt=total).setlinfo

The operator proves who they are with their password at `sign_in` (9001); every later call
carries the sign_no it returns. Every call has a deadline. A state-changing call gets a fresh
msgid (institution code, time, sequence) and keeps it across its retries, so a retry after a
timeout or a dropped connection returns the first answer and never settles twice. Failures
raise `MedsettleError` with the status code, message and field violations from the server's
`google.rpc.Status`.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.sealing import SealedStub
from clients.signing import Signer, SigningInterceptor
from medsettle.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    reconciliation_pb2,
    reconciliation_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)

T = TypeVar("T")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class MedsettleError(Exception):
    """A call the server refused (or that could not reach it)."""

    code: grpc.StatusCode
    message: str
    violations: list[tuple[str, str]]

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> MedsettleError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        violations: list[tuple[str, str]] = []
        status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
        return cls(code, message or "", violations)


_SEQ = itertools.count(1)  # one sequence for the whole process: clients never share a value
_SEQ_LOCK = threading.Lock()


class MsgidSource:
    """msgids as the national platform shapes them: institution code + time + sequence,
    with the process id and a per-client nonce so that two clients or two processes of one
    institution never produce the same msgid."""

    def __init__(self, fixmedins_code: str) -> None:
        self.prefix = fixmedins_code
        self.nonce = secrets.token_hex(2)

    def __call__(self) -> str:
        with _SEQ_LOCK:
            n = next(_SEQ)
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
        return f"{self.prefix}{stamp}{os.getpid() % 100000:05d}{self.nonce}{n:06d}"


class MedsettleClient:
    """Synchronous client for the Settlement, Catalog and Reconciliation services."""

    def __init__(
        self,
        target: str,
        *,
        fixmedins_code: str,
        opter: str,
        opter_name: str = "",
        deadline_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        signer: Signer | None = None,
        payload_key: bytes | None = None,
        password: str = "",
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        # `credentials` (grpc.ssl_channel_credentials, with the institution's certificate
        # and key for mutual TLS) makes the channel TLS; without it, plaintext.
        self.channel = channel or (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        if signer is not None:  # every call signed (clients/signing.py)
            self.channel = grpc.intercept_channel(self.channel, SigningInterceptor(signer))
        if payload_key is not None:  # every message sealed with SM4-GCM (clients/sealing.py)

            def sealed(d: Any, name: str) -> Any:
                return SealedStub(
                    self.channel, d.services_by_name[name], fixmedins_code, payload_key
                )

            self.settlement = cast(
                settlement_pb2_grpc.SettlementStub, sealed(settlement_pb2.DESCRIPTOR, "Settlement")
            )
            self.catalog = cast(
                catalog_pb2_grpc.CatalogStub, sealed(catalog_pb2.DESCRIPTOR, "Catalog")
            )
            self.reconciliation = cast(
                reconciliation_pb2_grpc.ReconciliationStub,
                sealed(reconciliation_pb2.DESCRIPTOR, "Reconciliation"),
            )
        else:
            self.settlement = settlement_pb2_grpc.SettlementStub(self.channel)
            self.catalog = catalog_pb2_grpc.CatalogStub(self.channel)
            self.reconciliation = reconciliation_pb2_grpc.ReconciliationStub(self.channel)
        self.fixmedins_code = fixmedins_code
        self.opter = opter
        self.opter_name = opter_name
        self.deadline_s = deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.sign_no = ""
        self.password = password  # the operator's, sent at SignIn only
        self.new_msgid = MsgidSource(fixmedins_code)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> MedsettleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def header(self, msgid: str = "") -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(
            msgid=msgid,
            fixmedins_code=self.fixmedins_code,
            opter=self.opter,
            opter_name=self.opter_name,
            sign_no=self.sign_no,
        )

    def call(self, fn: Callable[..., T], request: Any, *, retry: bool = True) -> T:
        """Call with the deadline; retry transport failures with the same request (and so
        the same msgid)."""
        attempt = 0
        while True:
            try:
                return fn(request, timeout=self.deadline_s)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                if retry and code in RETRYABLE and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise MedsettleError.from_rpc(err) from None

    # ------------------------------------------------------------------ Settlement
    def ping(self, payload: bytes = b"") -> settlement_pb2.PingResponse:
        return self.call(self.settlement.Ping, settlement_pb2.PingRequest(payload=payload))

    def sign_in(self, *, mac: str = "", ip: str = "") -> settlement_pb2.SignInResponse:
        resp = self.call(
            self.settlement.SignIn,
            settlement_pb2.SignInRequest(
                header=self.header(self.new_msgid()), mac=mac, ip=ip, password=self.password
            ),
        )
        self.sign_no = resp.sign_no
        return resp

    def sign_out(self) -> settlement_pb2.SignOutResponse:
        return self.call(
            self.settlement.SignOut,
            settlement_pb2.SignOutRequest(header=self.header(self.new_msgid())),
        )

    def get_person(self, mdtrt_cert_type: str, mdtrt_cert_no: str) -> settlement_pb2.Person:
        return self.call(
            self.settlement.GetPerson,
            settlement_pb2.GetPersonRequest(
                header=self.header(), mdtrt_cert_type=mdtrt_cert_type, mdtrt_cert_no=mdtrt_cert_no
            ),
        )

    def register(
        self,
        psn_no: str,
        *,
        insutype: int,
        med_type: int,
        begndate: int,
        ipt_otp_no: str,
        dise_codg: Sequence[str] = (),
        msgid: str | None = None,
        **extra: Any,
    ) -> settlement_pb2.RegisterResponse:
        return self.call(
            self.settlement.Register,
            settlement_pb2.RegisterRequest(
                header=self.header(msgid or self.new_msgid()),
                psn_no=psn_no,
                insutype=insutype,
                med_type=med_type,
                begndate=begndate,
                ipt_otp_no=ipt_otp_no,
                dise_codg=list(dise_codg),
                **extra,
            ),
        )

    def cancel_registration(
        self, mdtrt_id: str, psn_no: str = ""
    ) -> settlement_pb2.CancelRegistrationResponse:
        return self.call(
            self.settlement.CancelRegistration,
            settlement_pb2.CancelRegistrationRequest(
                header=self.header(self.new_msgid()), mdtrt_id=mdtrt_id, psn_no=psn_no
            ),
        )

    def upload_fees(
        self, mdtrt_id: str, lines: Iterable[settlement_pb2.FeeLine], *, msgid: str | None = None
    ) -> settlement_pb2.UploadFeesResponse:
        return self.call(
            self.settlement.UploadFees,
            settlement_pb2.UploadFeesRequest(
                header=self.header(msgid or self.new_msgid()), mdtrt_id=mdtrt_id, lines=list(lines)
            ),
        )

    def stream_fees(
        self,
        mdtrt_id: str,
        lines: Sequence[settlement_pb2.FeeLine],
        *,
        chunk: int = 1000,
        msgid: str | None = None,
    ) -> settlement_pb2.UploadFeesResponse:
        """Upload many lines as one client stream (one msgid for the whole stream)."""
        header = self.header(msgid or self.new_msgid())

        def chunks() -> Iterator[settlement_pb2.UploadFeesRequest]:
            for i in range(0, max(len(lines), 1), chunk):
                msg = settlement_pb2.UploadFeesRequest(lines=lines[i : i + chunk])
                if i == 0:
                    msg.header.CopyFrom(header)
                    msg.mdtrt_id = mdtrt_id
                yield msg

        return self.call(
            lambda _req, timeout: self.settlement.StreamFees(chunks(), timeout=timeout), None
        )

    def delete_fees(
        self, mdtrt_id: str, feedetl_sn: Sequence[str] = ()
    ) -> settlement_pb2.DeleteFeesResponse:
        return self.call(
            self.settlement.DeleteFees,
            settlement_pb2.DeleteFeesRequest(
                header=self.header(self.new_msgid()), mdtrt_id=mdtrt_id, feedetl_sn=list(feedetl_sn)
            ),
        )

    def _settle_request(
        self,
        mdtrt_id: str,
        psn_no: str,
        medfee_sumamt: int,
        acct_used: bool,
        invono: str,
        msgid: str,
    ) -> settlement_pb2.SettleRequest:
        return settlement_pb2.SettleRequest(
            header=self.header(msgid),
            mdtrt_id=mdtrt_id,
            psn_no=psn_no,
            medfee_sumamt=medfee_sumamt,
            acct_used_flag=acct_used,
            invono=invono,
        )

    def pre_settle(
        self, mdtrt_id: str, psn_no: str, *, medfee_sumamt: int, acct_used: bool = False
    ) -> settlement_pb2.SettleResponse:
        req = self._settle_request(mdtrt_id, psn_no, medfee_sumamt, acct_used, "", "")
        return self.call(self.settlement.PreSettle, req)

    def settle(
        self,
        mdtrt_id: str,
        psn_no: str,
        *,
        medfee_sumamt: int,
        acct_used: bool = False,
        invono: str = "",
        msgid: str | None = None,
    ) -> settlement_pb2.SettleResponse:
        req = self._settle_request(
            mdtrt_id, psn_no, medfee_sumamt, acct_used, invono, msgid or self.new_msgid()
        )
        return self.call(self.settlement.Settle, req)

    def cancel_settlement(
        self, setl_id: str, *, mdtrt_id: str = "", psn_no: str = "", msgid: str | None = None
    ) -> settlement_pb2.SettleResponse:
        return self.call(
            self.settlement.CancelSettlement,
            settlement_pb2.CancelSettlementRequest(
                header=self.header(msgid or self.new_msgid()),
                setl_id=setl_id,
                mdtrt_id=mdtrt_id,
                psn_no=psn_no,
            ),
        )

    def reverse(self, omsgid: str, oinfno: str = "") -> settlement_pb2.ReverseResponse:
        return self.call(
            self.settlement.Reverse,
            settlement_pb2.ReverseRequest(
                header=self.header(self.new_msgid()), omsgid=omsgid, oinfno=oinfno
            ),
        )

    def get_settlement(self, setl_id: str) -> settlement_pb2.SettleResponse:
        return self.call(
            self.settlement.GetSettlement,
            settlement_pb2.GetSettlementRequest(header=self.header(), setl_id=setl_id),
        )

    def query_settlements(self, **by: Any) -> settlement_pb2.QuerySettlementsResponse:
        """`mdtrt_id=`, `invono=` or `time_range=settlement_pb2.TimeRange(...)`."""
        return self.call(
            self.settlement.QuerySettlements,
            settlement_pb2.QuerySettlementsRequest(header=self.header(), **by),
        )

    # ------------------------------------------------------------------ Reconciliation
    def repair(
        self, setl_id: str, *, msgid: str | None = None
    ) -> reconciliation_pb2.RepairResponse:
        """Cancel at the center a center-mode settlement this front-end does not hold
        settled (what `reconcile --center` found on the center's side only)."""
        return self.call(
            self.reconciliation.Repair,
            reconciliation_pb2.RepairRequest(
                header=self.header(msgid or self.new_msgid()), setl_id=setl_id
            ),
        )

    def totals(
        self, begin_date: int, end_date: int, expected: Sequence[reconciliation_pb2.TotalsRow] = ()
    ) -> reconciliation_pb2.TotalsResponse:
        return self.call(
            self.reconciliation.Totals,
            reconciliation_pb2.TotalsRequest(
                header=self.header(),
                begin_date=begin_date,
                end_date=end_date,
                expected=list(expected),
            ),
        )

    def details(
        self,
        begin_date: int,
        end_date: int,
        theirs: Sequence[reconciliation_pb2.DetailRow] = (),
        *,
        compare: bool = False,
    ) -> reconciliation_pb2.DetailsResponse:
        return self.call(
            self.reconciliation.Details,
            reconciliation_pb2.DetailsRequest(
                header=self.header(),
                begin_date=begin_date,
                end_date=end_date,
                theirs=list(theirs),
                compare=compare,
            ),
        )

    def detail_pages(
        self, begin_date: int, end_date: int, page_size: int = 5000
    ) -> Iterator[reconciliation_pb2.DetailsResponse]:
        """The range's settlements a page at a time (a busy day's list is more than one
        message may carry)."""
        token = ""
        while True:
            page = self.call(
                self.reconciliation.Details,
                reconciliation_pb2.DetailsRequest(
                    header=self.header(),
                    begin_date=begin_date,
                    end_date=end_date,
                    page_size=page_size,
                    page_token=token,
                ),
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    # ------------------------------------------------------------------ Catalog (admin)
    def put_mappings(
        self, mappings: Sequence[catalog_pb2.Mapping]
    ) -> catalog_pb2.PutMappingsResponse:
        return self.call(
            self.catalog.PutMappings,
            catalog_pb2.PutMappingsRequest(
                header=self.header(self.new_msgid()), mappings=list(mappings)
            ),
        )

    def match_items(
        self, items: Sequence[catalog_pb2.HospitalItem], k: int = 5
    ) -> catalog_pb2.MatchItemsResponse:
        return self.call(
            self.catalog.MatchItems,
            catalog_pb2.MatchItemsRequest(header=self.header(), items=list(items), k=k),
        )

    def put_policy(self, text: str, fmt: str = "toml") -> catalog_pb2.PolicyVersion:
        return self.call(
            self.catalog.PutPolicy,
            catalog_pb2.PutPolicyRequest(
                header=self.header(self.new_msgid()), format=fmt, text=text
            ),
        )

    def get_policy(self, version: int = 0) -> catalog_pb2.PolicyVersion:
        return self.call(
            self.catalog.GetPolicy,
            catalog_pb2.GetPolicyRequest(header=self.header(), version=version),
        )

    def put_persons(
        self, persons: Sequence[catalog_pb2.PersonRecord]
    ) -> catalog_pb2.PutCountResponse:
        return self.call(
            self.catalog.PutPersons,
            catalog_pb2.PutPersonsRequest(
                header=self.header(self.new_msgid()), persons=list(persons)
            ),
        )

    def put_operators(
        self, operators: Sequence[catalog_pb2.Operator]
    ) -> catalog_pb2.PutCountResponse:
        """Register or change operators of this institution (security officer only)."""
        return self.call(
            self.catalog.PutOperators,
            catalog_pb2.PutOperatorsRequest(
                header=self.header(self.new_msgid()), operators=list(operators)
            ),
        )

    def import_catalog(
        self, version: int, items: Sequence[catalog_pb2.CatalogItem], *, chunk: int = 2000
    ) -> catalog_pb2.ImportCatalogResponse:
        header = self.header(self.new_msgid())

        def chunks() -> Iterator[catalog_pb2.CatalogChunk]:
            for i in range(0, max(len(items), 1), chunk):
                msg = catalog_pb2.CatalogChunk(version=version, items=items[i : i + chunk])
                if i == 0:
                    msg.header.CopyFrom(header)
                yield msg

        return self.call(
            lambda _r, timeout: self.catalog.ImportCatalog(chunks(), timeout=timeout), None
        )

    def download_catalog(self, since_version: int = 0) -> list[catalog_pb2.CatalogChunk]:
        def run(
            req: catalog_pb2.DownloadCatalogRequest, timeout: float
        ) -> list[catalog_pb2.CatalogChunk]:
            return list(self.catalog.DownloadCatalog(req, timeout=timeout))

        return self.call(
            run,
            catalog_pb2.DownloadCatalogRequest(header=self.header(), since_version=since_version),
        )
