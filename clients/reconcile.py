"""`medsettle reconcile`: a day's books of one institution as a finance clerk reads them, and,
with `--center`, the front-end's books laid against the center's (3201 totals, 3202
details). Exits 1 when they do not balance, naming every settlement on one side only or
different, and when the center recorded accumulator differences for the day (a settlement
applied against other accumulators than the front-end's), so night duty knows what to
chase."""

from __future__ import annotations

import time

import grpc

from clients.sdk import MedsettleClient, MedsettleError
from clients.slip import yuan
from medsettle.v1 import (
    catalog_pb2,
    common_pb2,
    reconciliation_pb2,
    reconciliation_pb2_grpc,
)

MATCH_NAMES = {
    reconciliation_pb2.OURS_ONLY: "front-end only",
    reconciliation_pb2.THEIRS_ONLY: "center only",
    reconciliation_pb2.DIFFERENT: "different",
}
STATE = {common_pb2.SETTLED: "settled", common_pb2.CANCELLED: "cancelled"}
# A person's yearly accumulators, as the wire names them (year and pool aside).
ACC_FIELDS = tuple(
    f.name for f in catalog_pb2.Accumulator.DESCRIPTOR.fields if f.name not in ("year", "pool")
)


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


def proposals(
    results: list[reconciliation_pb2.DetailResult],
) -> list[tuple[str, str, str]]:
    """What would bring the two sides together, per settlement: (setl_id, action, why);
    action "center" (Repair: cancel it at the center), "here" (CancelSettlement here, which
    the center has cancelled already) or "" (nothing to do by hand)."""
    out = []
    for r in results:
        ours, theirs = r.ours.state, r.theirs.state
        if r.match == reconciliation_pb2.THEIRS_ONLY and theirs == common_pb2.SETTLED:
            out.append((r.theirs.setl_id, "center", "settled at the center only"))
        elif r.match == reconciliation_pb2.DIFFERENT and (ours, theirs) == (
            common_pb2.CANCELLED,
            common_pb2.SETTLED,
        ):
            out.append((r.ours.setl_id, "center", "cancelled here, settled at the center"))
        elif r.match == reconciliation_pb2.DIFFERENT and (ours, theirs) == (
            common_pb2.SETTLED,
            common_pb2.CANCELLED,
        ):
            out.append((r.ours.setl_id, "here", "settled here, cancelled at the center"))
        elif r.match == reconciliation_pb2.OURS_ONLY:
            out.append((r.ours.setl_id, "", "not at the center yet: see the outbox backlog"))
    return out


def nets_to_zero(
    results: list[reconciliation_pb2.DetailResult],
    mine: list[reconciliation_pb2.TotalsRow],
    theirs: list[reconciliation_pb2.TotalsRow],
) -> bool:
    """Whether every difference is a settlement the center settled and cancelled that this
    front-end never held (what a repair leaves): nothing is owed either way, so the money
    of every day's totals agrees though the counts do not."""
    repaired = (reconciliation_pb2.THEIRS_ONLY, common_pb2.CANCELLED)
    if any(
        r.match != reconciliation_pb2.MATCHED and (r.match, r.theirs.state) != repaired
        for r in results
    ):
        return False
    Money = tuple[tuple[int, ...], frozenset[tuple[str, int]]]

    def money(rows: list[reconciliation_pb2.TotalsRow]) -> dict[tuple[int, int, int], Money]:
        return {
            (r.setl_date, r.insutype, r.clr_type): (
                (r.medfee_sumamt, r.fund_pay_sumamt, r.acct_pay, r.psn_cash_pay),
                frozenset((f.fund_pay_type, f.fund_payamt) for f in r.funds if f.fund_payamt),
            )
            for r in rows
        }

    zero: Money = ((0, 0, 0, 0), frozenset())
    ours, center = money(mine), money(theirs)
    return all(ours.get(k, zero) == center.get(k, zero) for k in ours.keys() | center.keys())


def repair(front: MedsettleClient, todo: list[tuple[str, str, str]]) -> None:
    """Carry out the proposals that have an action; a refusal is printed, not fatal."""
    for setl_id, action, _ in todo:
        try:
            if action == "center":
                print(f"  repaired {setl_id}: {front.repair(setl_id).done}")
            elif action == "here":
                front.cancel_settlement(setl_id)
                print(f"  repaired {setl_id}: cancelled here too")
        except MedsettleError as exc:
            print(f"  NOT repaired {setl_id}: {exc.code.name}: {exc.message}")


def run(
    front: MedsettleClient,
    center_target: str | None,
    day: int,
    center_credentials: grpc.ChannelCredentials | None = None,
    *,
    fix: bool = False,
) -> int:
    """Print the books; 0 when they balance (or there is no center to compare with), 1
    when they do not. With a center, what would repair each difference is proposed, and,
    with `fix`, done (by an operator who may cancel: a supervisor), then the books are
    compared again."""
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
    if nets_to_zero(list(details.results), list(mine.rows), list(theirs.rows)):
        print(
            f"balanced: {details.ours_count} settlements agree on both sides; the center also"
            " holds settlements it settled and cancelled that this front-end never had"
            " (repaired), which net to zero"
        )
        return 1 if differed else 0
    print("NOT BALANCED")
    for d in totals.differences:
        print(f"  totals {d}")
    for r in details.results:
        side = r.ours if r.match != reconciliation_pb2.THEIRS_ONLY else r.theirs
        print(f"  {MATCH_NAMES.get(r.match, '?'):>14}: {_row(side)}")
        if r.match == reconciliation_pb2.DIFFERENT:
            print(f"  {'center has':>14}: {_row(r.theirs)}")
    todo = proposals(list(details.results))
    if todo:
        print("REPAIRS" + (" (doing them now)" if fix else " (medsettle reconcile ... --repair)"))
        for setl_id, action, why in todo:
            what = {"center": "cancel at the center", "here": "cancel here"}.get(action, "wait")
            print(f"  {setl_id}: {why}: {what}")
    if fix and any(action for _, action, _ in todo):
        repair(front, todo)
        print()
        return run(front, center_target, day, center_credentials)
    return 1
