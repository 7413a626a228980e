"""What one request may carry, checked at the door before anything is read or written: the
length of every id and code a message names, the bytes and messages of a fee stream, and the
money of fee lines and visits. Also the sums of stored money that cannot overflow.

A request's ids end up in the audit trail (kept 180 days) even when the call is refused, so
an unbounded id is disk for the taking; a fee of 2^62 fen is accepted by int64 and then
overflows every sum over it. Bounds stop both where the request comes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from server.common import MSGID_MAX
from server.errors import OutOfRange, ResourceExhausted, Violations

# The longest value (in characters) of every id and code field, by its wire name, wherever
# it appears in a message (headers, fee lines, forwarded items, reconciliation rows). The
# lengths are those of the national platform's interface specification for designated
# institutions (《医疗保障信息平台 定点医药机构接口规范》, the input field tables of
# 9001 sign-in, 1101, 2201/2401, 2204/2301, 2207/2304, 2208/2305, 3201/3202): our own ids are
# within them (setl_id, mdtrt_id and cancel_id are 27 characters: kind, institution, node,
# row). Where our format is longer than the national field the bound is ours and says so.
FIELD_MAX: dict[str, int] = {
    # RequestHeader / NodeHeader
    "msgid": MSGID_MAX,  # national 30; the SDK's carries pid and nonce (41): we accept 64
    "omsgid": MSGID_MAX,  # the msgid of the call reversed
    "cancel_msgid": MSGID_MAX,
    "fixmedins_code": 30,
    "opter": 30,
    "opter_name": 50,
    "sign_no": 64,  # national 30; ours are 32 hex digits
    "mdtrtarea_admvs": 6,
    "node_id": 2,  # ours: two digits (config.node_id)
    # sign-in
    "mac": 20,
    "ip": 50,  # national 15 (IPv4); an IPv6 address needs up to 45
    # persons and visits
    "psn_no": 30,
    "mdtrt_cert_type": 3,
    "mdtrt_cert_no": 50,
    "psn_cert_no": 50,
    "card_no": 50,
    "voucher": 50,
    "insuplc_admdvs": 6,
    "admdvs": 6,
    "mdtrt_id": 30,
    "ipt_otp_no": 30,
    "dise_codg": 30,
    "dept_codg": 30,
    "atddr_no": 30,
    # fee lines and items
    "feedetl_sn": 30,
    "medins_list_codg": 50,
    "med_list_codg": 50,
    "bilg_dr_codg": 30,
    # settlements
    "setl_id": 30,
    "cancel_id": 30,
    "invono": 50,
    "oinfno": 30,  # national 4 (a transaction number); ours name the method
    "fund_pay_type": 6,
    "page_token": 64,  # ours: settlement time and setl_id
    "roles": 30,
}

# Beyond this many violations a request is refused without looking further.
MAX_VIOLATIONS = 20


# ---------------------------------------------------------------------------- ids at the door
@dataclass(frozen=True)
class _Plan:
    """Where a message type has bounded fields: its own string fields (name, most,
    repeated), and its message fields whose types have some (name, repeated, plan)."""

    strings: tuple[tuple[str, int, bool], ...]
    nested: tuple[tuple[str, bool, _Plan], ...]
    flat: bool  # only single strings: no message or repeated field below


_PLANS: dict[str, _Plan | None] = {}


def _plan(desc: Any) -> _Plan | None:
    """The plan of a message type (a Descriptor); None when nothing in it or below is
    bounded (cached)."""
    if desc.full_name in _PLANS:
        return _PLANS[desc.full_name]
    _PLANS[desc.full_name] = None  # a type within itself is not descended into again
    strings: list[tuple[str, int, bool]] = []
    nested: list[tuple[str, bool, _Plan]] = []
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_STRING and f.name in FIELD_MAX:
            strings.append((f.name, FIELD_MAX[f.name], f.is_repeated))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
            sub = _plan(f.message_type)
            if sub is not None:
                nested.append((f.name, f.is_repeated, sub))
    flat = not nested and not any(repeated for _, _, repeated in strings)
    plan = _Plan(tuple(strings), tuple(nested), flat) if strings or nested else None
    _PLANS[desc.full_name] = plan
    return plan


def check_ids(message: Message, where: str = "") -> None:
    """INVALID_ARGUMENT naming every id or code of `message` (and its sub-messages) longer
    than FIELD_MAX allows; `where` prefixes the names (a stream's `messages[3].`)."""
    plan = _plan(message.DESCRIPTOR)
    if plan is None:
        return
    v = Violations()
    _walk(message, plan, where, v)
    v.raise_if_any()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _walk(msg: Any, plan: _Plan, prefix: str, v: Violations) -> None:
    # A field's name is only written out for a violation: a 5,000-line upload walks 20,000
    # codes, nearly all of them fine.
    for name, most, repeated in plan.strings:
        value = getattr(msg, name)
        if repeated:
            for i, s in enumerate(value):
                if len(s) > most or _CONTROL.search(s):
                    _violation(v, f"{prefix}{name}[{i}]", s, most)
        elif len(value) > most or _CONTROL.search(value):
            _violation(v, f"{prefix}{name}", value, most)
    for name, repeated, sub in plan.nested:
        if repeated and sub.flat:  # fee lines: their codes checked here, named if need be
            for i, m in enumerate(getattr(msg, name)):
                for field, most, _ in sub.strings:
                    s = getattr(m, field)
                    if len(s) > most or _CONTROL.search(s):
                        _violation(v, f"{prefix}{name}[{i}].{field}", s, most)
        elif repeated:
            for i, m in enumerate(getattr(msg, name)):
                _walk(m, sub, f"{prefix}{name}[{i}].", v)
        elif msg.HasField(name):
            _walk(getattr(msg, name), sub, f"{prefix}{name}.", v)


def _violation(v: Violations, field: str, s: str, most: int) -> None:
    if len(s) > most:
        v.add(field, f"longer than {most} characters ({len(s):,})")
    else:  # NUL cannot be stored in PostgreSQL text, nor should any control character
        v.add(field, "holds control characters")
    if len(v.items) >= MAX_VIOLATIONS:
        v.raise_if_any()


# ---------------------------------------------------------------------------- a fee stream
# The most one fee line can take on the wire once its codes are bounded: the four codes, the
# five integers (varints of up to 10 bytes) and the tags, rounded up.
FEE_LINE_MAX_BYTES = 512


class StreamBound:
    """What one StreamFees call may make the server hold: `max_lines` lines in at most as
    many messages (plus the first), and the bytes those take, counted as they come (so
    unknown fields do not ride along for free)."""

    def __init__(self, max_lines: int) -> None:
        self.max_messages = max_lines + 1
        self.max_bytes = (max_lines + 1) * FEE_LINE_MAX_BYTES + 64 * 1024
        self.messages = 0
        self.bytes = 0

    def add(self, message: Message) -> None:
        self.messages += 1
        self.bytes += message.ByteSize()
        if self.messages > self.max_messages:
            raise ResourceExhausted(
                f"messages: more than {self.max_messages:,} messages in one stream"
            )
        if self.bytes > self.max_bytes:
            raise ResourceExhausted(
                f"messages: more than {self.max_bytes:,} bytes in one stream"
                f" (about {FEE_LINE_MAX_BYTES} a line)"
            )


# ---------------------------------------------------------------------------- money
INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------------------- exact sums
def split_sum(column: str) -> str:
    """SQL summing an int64 column as its high and low 32 bits apart (two columns): neither
    sum can overflow (SQLite's SUM raises on int64 overflow) below 2^31 rows, and `joined`
    puts them together exactly in a Python int. The same SQL serves PostgreSQL."""
    return f"COALESCE(SUM({column} >> 32), 0), COALESCE(SUM({column} & 4294967295), 0)"


def joined(hi: Any, lo: Any) -> int:
    """The exact sum from the two columns of `split_sum` (PostgreSQL sums as NUMERIC)."""
    return int(hi) * 4294967296 + int(lo)


def check_int64(value: int, field: str, where: str) -> int:
    """`value`, or OUT_OF_RANGE naming the field (of the total `where`) a sum beyond int64
    would have gone into."""
    if -INT64_MAX - 1 <= value <= INT64_MAX:
        return value
    reason = f"the sum over {where} is {value}, beyond int64; ask day by day"
    raise OutOfRange(f"{field}: {reason}", [(field, reason)])
