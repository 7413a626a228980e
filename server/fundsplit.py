"""The fund split of one visit from its preprocessing summary, as a settlement (`SetlInfo`):
pure, no storage. The front-end in local mode and the center in center mode both call it,
so the same inputs give the same settlement in either mode.

Settling is two steps because the accumulators to read depend on the rule: `choose_rule`
finds the policy rule and its accumulator pool; the caller reads (and, at the center, locks)
the person's accumulators for that year and pool; `fund_split` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import engine_rs
from medsettle.v1 import common_pb2
from server import metrics
from server.codes import age_on
from server.errors import FailedPrecondition
from server.persons import PersonRow

FUND_NAMES: dict[str, str] = engine_rs.FUND_NAMES  # one table: the ledger names legs too


@dataclass(frozen=True)
class SplitContext:
    """What the split needs of the visit and the treating institution."""

    fixmedins_code: str
    hosp_lv: int
    treatment_admdvs: str
    mdtrt_id: str
    insutype: int
    med_type: int
    treatment: int  # engine code: 1 outpatient, 2 inpatient, 3 special outpatient
    begndate: int


@dataclass(frozen=True)
class RuleChoice:
    selection: engine_rs.Selection
    rule: int
    year: int
    pool: str


def engine_failure(exc: Exception) -> FailedPrecondition:
    return FailedPrecondition(f"the visit cannot be settled: {exc}")


def cross_region(treatment_admdvs: str, person: PersonRow) -> int:
    """The engine's cross-region status: 0 treated in the insured region; elsewhere 1 when
    the person filed the move (异地就医备案), else 2."""
    if treatment_admdvs == person.insuplc_admdvs:
        return 0
    return 1 if person.cross_region == 1 else 2


def clr_type_of(treatment: int) -> int:
    return 21 if treatment == 2 else 11


def choose_rule(policy: engine_rs.Policy, ctx: SplitContext, person: PersonRow) -> RuleChoice:
    sel = engine_rs.Selection(
        treatment=ctx.treatment,
        date=ctx.begndate,
        region=int(person.insuplc_admdvs) if person.insuplc_admdvs.isdigit() else 0,
        insutype=ctx.insutype,
        psn_type=person.psn_type,
        hosp_lv=ctx.hosp_lv,
    )
    rule = policy.select(sel)
    if rule is None:
        raise FailedPrecondition(
            f"no policy rule covers insutype {ctx.insutype}, med_type {ctx.med_type},"
            f" psn_type {person.psn_type}, hospital level {ctx.hosp_lv}"
            f" on {ctx.begndate} (policy version {policy.version})"
        )
    return RuleChoice(sel, rule, ctx.begndate // 10000, policy.rule_accumulator(rule))


def fund_split(
    policy: engine_rs.Policy,
    choice: RuleChoice,
    ctx: SplitContext,
    person: PersonRow,
    summary: engine_rs.Summary,
    acc_before: dict[str, int],
    acct_used: bool,
    invono: str,
) -> tuple[common_pb2.SetlInfo, dict[str, int]]:
    """The settlement (without id, time, state, categories or catalog version, which the
    caller sets) and the accumulators after it."""
    who = engine_rs.Person(
        age=age_on(person.brdy, ctx.begndate),
        retired=person.retired,
        civil_servant=person.cvlserv_flag,
        cross_region=cross_region(ctx.treatment_admdvs, person),
        assistance=person.maf_flag,
        acct_used=acct_used,
        acct_balance=person.balc,
    )
    acc = engine_rs.Accumulators(**acc_before)
    try:
        with metrics.SPLIT.time():
            result = engine_rs.split(policy, summary, choice.selection, who, acc)
    except engine_rs.EngineError as exc:
        raise engine_failure(exc) from None
    critical = result.critical_pay
    info = common_pb2.SetlInfo(
        mdtrt_id=ctx.mdtrt_id,
        psn_no=person.psn_no,
        psn_name=person.psn_name,
        insutype=ctx.insutype,
        psn_type=person.psn_type,
        med_type=ctx.med_type,
        clr_type=clr_type_of(ctx.treatment),
        fixmedins_code=ctx.fixmedins_code,
        invono=invono,
        medfee_sumamt=summary.medfee_sumamt,
        fulamt_ownpay_amt=summary.fulamt_ownpay_amt,
        overlmt_amt=summary.overlmt_amt,
        preselfpay_amt=summary.preselfpay_amt,
        inscp_scp_amt=summary.inscp_scp_amt,
        act_pay_dedc=result.act_pay_dedc,
        hifp_pay=result.hifp_pay,
        cvlserv_pay=result.cvlserv_pay,
        hifob_pay=critical if result.critical_fund_pay_type == "330100" else 0,
        hifmi_pay=critical if result.critical_fund_pay_type == "390200" else 0,
        maf_pay=result.maf_pay,
        fund_pay_sumamt=result.fund_pay_sumamt,
        psn_part_amt=result.psn_part_amt,
        acct_pay=result.acct_pay,
        psn_cash_pay=result.psn_cash_pay,
        balc=result.balc,
        rule_id=result.rule_id,
        policy_version=policy.version,
        line_count=summary.line_count,
    )
    info.setldetail.extend(
        common_pb2.FundLeg(
            fund_pay_type=leg.fund_pay_type,
            fund_pay_type_name=FUND_NAMES.get(leg.fund_pay_type, ""),
            inscp_scp_amt=leg.base,
            fund_payamt=leg.amount,
            setl_proc_info=leg.setl_proc_info,
        )
        for leg in result.legs
    )
    return info, result.accumulators.to_dict()


# The amounts of a settlement (SetlInfo), in fen; they add up over settlements.
SETL_AMOUNTS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifob_pay",
    "hifmi_pay",
    "maf_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
)
