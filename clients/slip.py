"""The settlement slip (结算单) as a readable table: every amount labelled with its wire name
and its Chinese label, amounts in yuan with two decimals (exact: integer fen formatted)."""

from __future__ import annotations

from medsettle.v1 import common_pb2

LABELS: list[tuple[str, str]] = [
    ("medfee_sumamt", "医疗费总额"),
    ("fulamt_ownpay_amt", "全自费金额"),
    ("overlmt_amt", "超限价自费金额"),
    ("preselfpay_amt", "先行自付金额"),
    ("inscp_scp_amt", "符合政策范围金额"),
    ("act_pay_dedc", "实际支付起付线"),
    ("hifp_pay", "统筹基金支付"),
    ("cvlserv_pay", "公务员医疗补助支付"),
    ("hifob_pay", "职工大额医疗费用补助支付"),
    ("hifmi_pay", "居民大病保险支付"),
    ("maf_pay", "医疗救助基金支付"),
    ("fund_pay_sumamt", "基金支付总额"),
    ("psn_part_amt", "个人负担总金额"),
    ("acct_pay", "个人账户支付"),
    ("psn_cash_pay", "个人现金支付"),
    ("balc", "个人账户余额"),
]
STATES = {common_pb2.SETTLED: "已结算 SETTLED", common_pb2.CANCELLED: "已撤销 CANCELLED"}
CATEGORIES = {
    0: "未对照 unmapped",
    1: "床位费",
    2: "诊察费",
    3: "检查费",
    4: "化验费",
    5: "治疗费",
    6: "手术费",
    7: "护理费",
    8: "卫生材料费",
    9: "西药费",
    10: "中药饮片费",
    11: "中成药费",
    12: "一般诊疗费",
    13: "挂号费",
    14: "其他费",
}


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def _width(s: str) -> int:
    """Display width: CJK characters take two columns."""
    return sum(2 if ord(c) > 0x2E7F else 1 for c in s)


def _pad(s: str, w: int) -> str:
    return s + " " * max(0, w - _width(s))


def render(info: common_pb2.SetlInfo, title: str = "医保结算单 settlement slip") -> str:
    out = [f"== {title} =="]
    out.append(f"setl_id {info.setl_id or '(pre-settlement)'}   mdtrt_id {info.mdtrt_id}")
    out.append(
        f"psn_no {info.psn_no} {info.psn_name}   insutype {info.insutype}   psn_type"
        f" {info.psn_type}   med_type {info.med_type}   clr_type {info.clr_type}"
    )
    state = STATES.get(info.state, "pre-settlement 预结算")
    out.append(
        f"state {state}   rule {info.rule_id}   policy v{info.policy_version}"
        f"   catalog v{info.catalog_version}   lines {info.line_count}"
    )
    if info.cancel_id:
        out.append(f"cancel_id {info.cancel_id}   cancel_msgid {info.cancel_msgid}")
    out.append("")
    w = max(_width(f"{k} {v}") for k, v in LABELS) + 2
    for key, label in LABELS:
        out.append(f"  {_pad(f'{key} {label}', w)}{yuan(getattr(info, key)):>14}")
    if info.categories:
        out.append("")
        out.append(
            "  fee categories 费用类别     total      self-pay   over-cap   pre-self    in-scope"
        )
        for c in info.categories:
            name = _pad(f"{c.med_chrgitm_type:>2} {CATEGORIES.get(c.med_chrgitm_type, '')}", 18)
            out.append(
                f"  {name}{yuan(c.det_item_fee_sumamt):>12}{yuan(c.fulamt_ownpay_amt):>11}"
                f"{yuan(c.overlmt_amt):>11}{yuan(c.preselfpay_amt):>11}{yuan(c.inscp_scp_amt):>12}"
            )
    out.append("")
    out.append("  fund legs 基金分项 (setldetail)")
    for leg in info.setldetail:
        out.append(
            f"  {leg.fund_pay_type} {_pad(leg.fund_pay_type_name, 30)} base"
            f" {yuan(leg.inscp_scp_amt):>12}  paid {yuan(leg.fund_payamt):>12}"
        )
        out.append(f"      {leg.setl_proc_info}")
    return "\n".join(out)
