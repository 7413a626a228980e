"""`medsettle reconcile`: a day's books of one institution as a finance clerk reads them, and,
with `--center`, the front-end's books laid against the center's (3201 totals, 3202
details). Exits 1 when they do not balance, naming every settlement on one side only or
different, and when the center recorded accumulator differences for the day (a settlement
applied against other accumulators than the front-end's), so night duty knows what to
chase."""

from __future__ import annotations

import time

import grpc

from clients.pb.medsettle.v1 import (
    common_pb2,
    reconciliation_pb2,
    reconciliation_pb2_grpc,
)
from clients.sdk import MedsettleClient, MedsettleError
from clients.slip import yuan
from server.store import ACC_FIELDS

MATCH_NAMES = {
    reconciliation_pb2.OURS_ONLY: "front-end only",
    reconciliation_pb2.THEIRS_ONLY: "center only",
    reconciliation_pb2.DIFFERENT: "different",
}
STATE = {common_pb2.SETTLED: "settled", common_pb2.CANCELLED: "cancelled"}


def today(tz_offset_min: int = 480) -> int:
    t = time.gmtime(time.time() + tz_offset_min * 60)
    return t.tm_year * 10000 + t.tm_mon * 100 + t.tm_mday


def print_totals(title: str, rows: list[reconciliation_pb2.TotalsRow]) -> None:
    print(title)
    print(
        "  date      insutype clr  settled cancelled   medfee_sumamt  fund_pay_sumamt"
        "    acct_pay  psn_cash_pay"
    )
    for r in rows:
        print(
            f"  {r.setl_date} {r.insutype:>8} {r.clr_type:>4} {r.setl_count:>8} {r.cancel_count:>9}"
            f" {yuan(r.medfee_sumamt):>15} {yuan(r.fund_pay_sumamt):>16} {yuan(r.acct_pay):>11}"
            f" {yuan(r.psn_cash_pay):>13}"
        )
        for f in r.funds:
            print(f"      fund {f.fund_pay_type}: {yuan(f.fund_payamt)}")
    if not rows:
        print("  (no settlements)")


def _row(d: reconciliation_pb2.DetailRow) -> str:
    return (
        f"{d.setl_id} {STATE.get(d.state, '?')} medfee {yuan(d.medfee_sumamt)}"
        f" fund {yuan(d.fund_pay_sumamt)} cash {yuan(d.psn_cash_pay)}"
    )


def print_accumulator_differences(diffs: list[reconciliation_pb2.AccumulatorDifference]) -> bool:
    """The settlements the center applied against other accumulators than the front-end's
    (the person settled elsewhere meanwhile); True when there are any."""
    if not diffs:
        return False
    print(
        f"ACCUMULATORS DIFFERED for {len(diffs)} settlement(s): the person settled elsewhere"
        " meanwhile; the center applied this front-end's change to its own values. Check the"
        " deductible and caps of each:"
    )
    for d in diffs:
        parts = [
            f"{f} center {getattr(d.center, f)} front-end {getattr(d.front_end, f)}"
            for f in ACC_FIELDS
            if getattr(d.center, f) != getattr(d.front_end, f)
        ]
        print(f"  {d.setl_id} {d.psn_no} {d.center.year} {d.center.pool}: {'; '.join(parts)}")
    print()
    return True


def center_books(
    front: MedsettleClient,
    center_target: str,
    day: int,
    credentials: grpc.ChannelCredentials | None,
) -> tuple[reconciliation_pb2.TotalsResponse, reconciliation_pb2.DetailsResponse]:
    """The center's totals and details of the day for the front-end's institution; over
    mutual TLS `credentials` carry the front-end machine's certificate (the center answers
    front-ends only). A failure is a MedsettleError, as the SDK's are."""
    header = common_pb2.RequestHeader(fixmedins_code=front.fixmedins_code, opter=front.opter)
    ch = (
        grpc.secure_channel(center_target, credentials)
        if credentials is not None
        else grpc.insecure_channel(center_target)
    )
    with ch:
        center = reconciliation_pb2_grpc.ReconciliationStub(ch)
        try:
            theirs = center.Totals(
                reconciliation_pb2.TotalsRequest(header=header, begin_date=day, end_date=day),
                timeout=front.deadline_s,
            )
            their_details = center.Details(
                reconciliation_pb2.DetailsRequest(header=header, begin_date=day, end_date=day),
                timeout=front.deadline_s,
            )
        except grpc.RpcError as err:
            raise MedsettleError.from_rpc(err) from None
    return theirs, their_details


def run(
    front: MedsettleClient,
    center_target: str | None,
    day: int,
    center_credentials: grpc.ChannelCredentials | None = None,
) -> int:
    """Print the books; 0 when they balance (or there is no center to compare with), 1
    when they do not."""
    mine = front.totals(day, day)
    print_totals(f"对总账 totals of {front.fixmedins_code} on {day} (front-end)", list(mine.rows))
    if center_target is None:
        return 0
    theirs, their_details = center_books(front, center_target, day, center_credentials)
    print()
    print_totals("center", list(theirs.rows))
    totals = front.totals(day, day, expected=list(theirs.rows))
    details = front.details(day, day, [r.ours for r in their_details.results], compare=True)
    print()
    differed = print_accumulator_differences(list(their_details.accumulator_differences))
    if totals.balanced and details.balanced:
        print(f"balanced: {details.ours_count} settlements agree on both sides")
        return 1 if differed else 0
    print("NOT BALANCED")
    for d in totals.differences:
        print(f"  totals {d}")
    for r in details.results:
        side = r.ours if r.match != reconciliation_pb2.THEIRS_ONLY else r.theirs
        print(f"  {MATCH_NAMES.get(r.match, '?'):>14}: {_row(side)}")
        if r.match == reconciliation_pb2.DIFFERENT:
            print(f"  {'center has':>14}: {_row(r.theirs)}")
    return 1
