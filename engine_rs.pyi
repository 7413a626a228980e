"""medsettle's settlement core (Rust): policy model, catalog index and matching, fee
preprocessing and fund split. Money is integer fen, ratios basis points, quantities 1/10_000.

Bulk inputs are dicts of numpy columns; strings are `(uint8 data, int64 offsets)` pairs
(see server/columns.py). Every error is an `EngineError` subclass naming the field.
"""

import sqlite3
from typing import Any, NotRequired, TypeAlias, TypedDict, final

import numpy as np
import numpy.typing as npt

StrColumn = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]
_I32 = npt.NDArray[np.int32]
_Bool = npt.NDArray[np.bool_]

# The column dicts the engine reads (checker-only: a plain dict at run time). Keys are
# required or NotRequired exactly as the engine reads them; an absent optional column is
# read as its default (empty strings, zeros, False; kind 1, age_max 255).

class CatalogItems(TypedDict):
    """`Catalog.load` items, one row per insurance item."""

    code: StrColumn  # national insurance code (med_list_codg), unique
    chrgitm_lv: _U8  # 1 class A (甲), 2 class B (乙), 3 class C (丙)
    fee_category: _U8  # med_chrgitm_type 1..14 (bed .. other)
    name: NotRequired[StrColumn]  # registered name (通用名 / 项目名称)
    spec: NotRequired[StrColumn]  # specification (规格)
    dosage_form: NotRequired[StrColumn]  # 剂型
    manufacturer: NotRequired[StrColumn]  # 生产企业
    # 1 western med, 2 Chinese patent med, 3 herbal pieces, 4 hospital preparation,
    # 5 medical service, 6 material
    kind: NotRequired[_U8]
    price_cap: NotRequired[_I64]  # per unit in fen (限价); 0 = none
    # (n, 1 + len(selfpay_psn_types)); 1-d when there are no selfpay_psn_types
    selfpay_prop_bp: NotRequired[_I32]
    inpatient_only: NotRequired[_Bool]  # restricted to inpatients
    sex: NotRequired[_U8]  # 0 any, 1 male, 2 female
    age_min: NotRequired[_U8]  # inclusive age range in years (0, 255 = any)
    age_max: NotRequired[_U8]
    diagnoses: NotRequired[StrColumn]  # comma-separated ICD-10 prefixes it is limited to
    valid_from: NotRequired[_I32]  # yyyymmdd, 0 = open
    valid_to: NotRequired[_I32]

class CatalogMappings(TypedDict):
    """`Catalog.load` mappings (对照): hospital code -> insurance code."""

    hosp_code: StrColumn
    ins_code: StrColumn

class FeeLines(TypedDict):
    """`preprocess` fee lines."""

    medins_list_codg: StrColumn  # hospital item code
    cnt: _I64  # quantity in 1/10_000 units
    pric: _I64  # unit price in fen
    det_item_fee_sumamt: _I64  # line amount in fen
    med_list_codg: NotRequired[StrColumn]  # the HIS's insurance code; empty = the mapping's
    hosp_appr_flag: NotRequired[_I64]  # 0 none, 1 approved (lifts diagnosis limits), 2 self-pay
    fee_date: NotRequired[_I64]  # yyyymmdd, 0 = the visit date

class BatchFeeLines(FeeLines):
    """`preprocess_batch` fee lines: `visit` indexes the visits."""

    visit: _I64

class VisitColumns(TypedDict):
    """`preprocess_batch` visits."""

    treatment: _I64  # 1 outpatient, 2 inpatient, 3 special outpatient
    date: _I64  # yyyymmdd
    psn_type: NotRequired[_I64]
    sex: NotRequired[_I64]
    age: NotRequired[_I64]
    diagnoses: NotRequired[StrColumn]

class SettlementColumns(TypedDict):
    """`split_batch` settlements: sums, selection, person and accumulators."""

    medfee_sumamt: _I64
    fulamt_ownpay_amt: NotRequired[_I64]
    overlmt_amt: NotRequired[_I64]
    preselfpay_amt: NotRequired[_I64]
    inscp_scp_amt: NotRequired[_I64]
    region: NotRequired[_I64]
    insutype: NotRequired[_I64]
    psn_type: NotRequired[_I64]
    treatment: NotRequired[_I64]
    hosp_lv: NotRequired[_I64]
    date: NotRequired[_I64]
    admission_no: NotRequired[_I64]
    age: NotRequired[_I64]
    cross_region: NotRequired[_I64]
    acct_balance: NotRequired[_I64]
    retired: NotRequired[_Bool]
    civil_servant: NotRequired[_Bool]
    assistance: NotRequired[_Bool]
    acct_used: NotRequired[_Bool]
    inpatient_count: NotRequired[_I64]
    dedc_paid: NotRequired[_I64]
    hifp_paid: NotRequired[_I64]
    hifp_base: NotRequired[_I64]
    critical_base: NotRequired[_I64]
    critical_paid: NotRequired[_I64]
    cvlserv_paid: NotRequired[_I64]
    maf_paid: NotRequired[_I64]

class EngineError(ValueError): ...

class ColumnError(EngineError):
    field: str
    reason: str

class LineError(EngineError):
    line: int
    field: str
    reason: str

class InputError(EngineError):
    row: int
    field: str
    reason: str

class PolicyError(EngineError):
    path: str
    reason: str

class CryptoError(EngineError):
    """A key, user id or block length the national algorithms cannot take."""

class NoRuleError(EngineError):
    row: int
    selection: str

class Refused(Exception):
    """A request a ledger operation refuses (server.errors.refusal makes it a ClientError)."""

    code: str  # a grpc.StatusCode name: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...
    message: str
    field: str | None  # INVALID_ARGUMENT: the field and why
    reason: str | None

@final
class Catalog:
    @staticmethod
    def load(
        items: CatalogItems,
        mappings: CatalogMappings | None = None,
        *,
        version: int = 0,
        selfpay_psn_types: list[int] = ...,
    ) -> Catalog: ...
    @property
    def version(self) -> int: ...
    @property
    def mapping_count(self) -> int: ...
    @property
    def stale_mappings(self) -> int: ...
    @property
    def heap_bytes(self) -> int: ...
    def __len__(self) -> int: ...
    def lookup(self, code: str) -> int | None: ...
    def map_hosp_code(self, hosp_code: str) -> int | None: ...
    def item(self, index: int) -> dict[str, Any]: ...
    def codes(self, indices: _I64) -> list[str]: ...

@final
class CatalogSlot:
    def __new__(cls, catalog: Catalog) -> CatalogSlot: ...
    def current(self) -> Catalog: ...
    def swap(self, catalog: Catalog) -> Catalog: ...

@final
class Ledger:
    """The settle operations and the ledger's reads and writes on the connection of a
    front-end's store (engine_rs/src/ledger/):
    the same `sqlite3*` handle, the same SQLite library, inside its open transaction."""

    def __new__(cls, conn: sqlite3.Connection) -> Ledger: ...
    @property
    def connection(self) -> sqlite3.Connection | None: ...
    def close(self) -> None: ...
    def fee_lines(self, visit_id: int) -> tuple[FeeLines, list[str], bytes]: ...
    def insert_fee_lines(
        self, visit_id: int, first_seq: int, msgid: str, upload: FeeUpload
    ) -> None:
        """An upload's fee lines (as the engine read them) written to the visit, numbered
        from `first_seq`, marked with the upload's msgid."""
    def settle_batch(
        self,
        node: LedgerNode,
        calls: list[LedgerBatchCall],
        commit: bool = False,
    ) -> list[tuple[bytes, bool, str, tuple[int, int] | None] | BaseException]:
        """The settles and cancels of a batch, each whole in its savepoint, the GIL
        released: per call (method "Settle" or "CancelSettlement", request, req_hash, now,
        caller, (policy, catalog) for a settle, offline limits, and for center mode's keep
        (the center's CenterSettleResponse, accumulator year, pool, line results, lines'
        digest)) its (answer, replayed, setl_id, engine nanoseconds (preprocess, split) or
        None when nothing was computed), or the exception it raised as a value (Refused for
        a refusal); a store failure raises. `commit`: COMMIT the transaction in the same
        GIL-free run."""
    def start_batch(
        self,
        node: LedgerNode,
        calls: list[LedgerBatchCall],
        commit: bool = False,
        unlock_fd: int | None = None,
    ) -> None:
        """`settle_batch` on the ledger's own commit thread, which never takes the GIL:
        returns at once; `ready_fd` turns readable when it has finished. One at a time.
        `unlock_fd` (with `commit`): an flock the thread unlocks once the COMMIT succeeds."""
    @property
    def ready_fd(self) -> int | None:
        """Readable once a started batch has finished (None before the first start)."""
    def finished_batch(
        self,
    ) -> list[tuple[bytes, bool, str, tuple[int, int] | None] | BaseException] | None:
        """The started batch's outcome as `settle_batch` returns or raises it; None while
        it runs."""
    def pre_settle(
        self,
        node: LedgerNode,
        request: bytes,
        caller: LedgerCaller,
        policy: Policy,
        catalog: Catalog,
    ) -> tuple[bytes, tuple[int, int]]: ...
    def cancellable(
        self, caller: LedgerCaller, setl_id: str, mdtrt_id: str, psn_no: str
    ) -> tuple[int, str, str, int]:
        """The settlement a cancel names, after every check: (row id, setl_id, psn_no,
        mode); Refused otherwise."""
    def cancel(
        self,
        node: LedgerNode,
        caller: LedgerCaller,
        setl_id: str,
        mdtrt_id: str,
        psn_no: str,
        msgid: str,
        now: int,
    ) -> tuple[bytes, str]:
        """The settlement cancelled in the open transaction, after every check: (the
        cancelled SetlInfo, the cancel id); Refused otherwise."""
    def prepare_center(
        self,
        node: LedgerNode,
        request: bytes,
        caller: LedgerCaller,
        policy: Policy,
        catalog: Catalog,
        req_hash: bytes | None = None,
        instance_id: str = "",
    ) -> bytes | tuple[bytes, str, int, str, bytes, bytes, tuple[int, int]]:
        """Center mode's question for the center, its header naming this front-end machine
        (`instance_id`); writes nothing. With `req_hash` (a Settle): the msgid's stored
        answer when there is one. Otherwise (CenterSettleRequest bytes, ready to send,
        insured region, acc year, acc pool, line results, lines digest, engine nanoseconds
        (preprocess, split))."""

# (fixmedins_code, hosp_lv, admdvs, opter, roles, rpc) of an authenticated caller
LedgerCaller: TypeAlias = tuple[str, int, str, str, str, str]
# One call of `Ledger.settle_batch` / `start_batch`: method, request, req_hash, now, caller,
# (policy, catalog) for a settle, offline limits, center mode's keep.
LedgerBatchCall: TypeAlias = tuple[
    str,
    bytes,
    bytes,
    int,
    LedgerCaller,
    tuple[Policy, Catalog] | None,
    tuple[int, int] | None,
    tuple[bytes, int, str, bytes, bytes] | None,
]

@final
class LedgerNode:
    """The front-end node a ledger settles for: node id, clock zone, seal key and version
    (1 AES-256-GCM, 2 SM4-GCM), audit key."""

    def __new__(
        cls, node_id: str, tz_offset_min: int, pii_seal: bytes, pii_version: int, audit_key: bytes
    ) -> LedgerNode: ...
    @property
    def node_id(self) -> str: ...

@final
class CenterNode:
    """The center's keys and settings for deciding forwarded batches: seal key and version
    (1 AES-256-GCM, 2 SM4-GCM), clock zone, the largest credible visit fee."""

    def __new__(
        cls, pii_seal: bytes, pii_version: int, tz_offset_min: int, max_visit_fee_fen: int
    ) -> CenterNode: ...
    def settle_summaries(
        self,
        calls: list[tuple[bytes, bytes, int, bool]],
        institutions: dict[str, tuple[int, str]],
        policies: dict[int, Policy],
        persons: list[tuple[Any, ...]],
        accumulators: list[tuple[Any, ...]],
    ) -> SummaryDecision: ...

@final
class SummaryDecision:
    """What a batch of SettleSummary calls decided: per call its answer (bytes), its
    refusal (a Refused, not raised) or None (the caller's own refusal stands); the writes."""

    @property
    def outcomes(self) -> list[bytes | Refused | None]: ...
    @property
    def settled(self) -> int: ...
    @property
    def settlements(self) -> str: ...
    @property
    def legs(self) -> str: ...
    @property
    def remembered(self) -> str: ...
    @property
    def accumulators(self) -> tuple[list[list[Any]], list[list[Any]]]: ...
    @property
    def moved(self) -> list[list[Any]]: ...

# (fixmedins_code, node_id, hosp_lv, admdvs) of the front-end sending a batch
ForwardSender: TypeAlias = tuple[str, str, int, str]

@final
class ForwardBatch:
    """A decoded ForwardRequest and what its items name (server/center/store/batch.py reads
    those rows, then `decide`)."""

    def __new__(cls, request: bytes) -> ForwardBatch: ...
    @property
    def setl_ids(self) -> list[str]: ...
    @property
    def settle_ids(self) -> list[str]: ...
    @property
    def mdtrt_ids(self) -> list[str]: ...
    @property
    def psn_nos(self) -> list[str]: ...
    @property
    def keys(self) -> list[tuple[str, int, str]]: ...
    @property
    def policy_versions(self) -> list[int]: ...
    def decide(
        self,
        node: CenterNode,
        sender: ForwardSender,
        now: int,
        policies: dict[int, Policy],
        settlements: list[tuple[Any, ...]],
        legs: list[tuple[Any, ...]],
        active: list[tuple[str, str]],
        persons: list[tuple[Any, ...]],
        accumulators: list[tuple[Any, ...]],
    ) -> ForwardDecision: ...

@final
class ForwardDecision:
    """What a forwarded batch decided: the encoded ForwardResponse and the writes."""

    @property
    def answer(self) -> bytes: ...
    @property
    def outcomes(self) -> list[tuple[int, int, str]]: ...
    @property
    def conflicts(self) -> list[tuple[int, str, str]]: ...
    @property
    def recorded(self) -> int: ...
    @property
    def settlements_copy(self) -> bytes: ...
    @property
    def legs_copy(self) -> bytes: ...
    @property
    def cancels(self) -> list[list[Any]]: ...
    @property
    def accumulators(self) -> tuple[list[list[Any]], list[list[Any]]]: ...
    @property
    def moved(self) -> list[list[Any]]: ...
    @property
    def differences(self) -> list[tuple[Any, ...]]: ...

@final
class Matcher:
    def __new__(cls, catalog: Catalog) -> Matcher: ...
    def __len__(self) -> int: ...
    def match(
        self,
        name: str,
        spec: str = "",
        dosage_form: str = "",
        manufacturer: str = "",
        k: int = 5,
    ) -> list[tuple[str, float]]: ...
    def match_many(
        self,
        name: StrColumn,
        spec: StrColumn,
        dosage_form: StrColumn,
        manufacturer: StrColumn,
        k: int = 5,
    ) -> tuple[_I64, npt.NDArray[np.float32]]: ...

@final
class Policy:
    @staticmethod
    def from_toml(text: str) -> Policy: ...
    @staticmethod
    def from_json(text: str) -> Policy: ...
    def to_json(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def line_tolerance_fen(self) -> int: ...
    @property
    def offline_limits(self) -> tuple[int, int] | None: ...
    def __len__(self) -> int: ...
    def select(self, selection: Selection) -> int | None: ...
    def rule_id(self, index: int) -> str: ...
    def rule_accumulator(self, index: int) -> str: ...

@final
class Visit:
    def __new__(
        cls,
        *,
        treatment: int,
        date: int,
        psn_type: int = 0,
        sex: int = 0,
        age: int = 0,
        diagnoses: list[str] = ...,
    ) -> Visit: ...
    @property
    def treatment(self) -> int: ...
    @property
    def date(self) -> int: ...
    @property
    def psn_type(self) -> int: ...
    @property
    def sex(self) -> int: ...
    @property
    def age(self) -> int: ...
    @property
    def diagnoses(self) -> list[str]: ...

@final
class Selection:
    def __new__(
        cls,
        *,
        treatment: int,
        date: int,
        region: int = 0,
        insutype: int = 0,
        psn_type: int = 0,
        hosp_lv: int = 0,
        admission_no: int = 0,
    ) -> Selection: ...
    @property
    def treatment(self) -> int: ...
    @property
    def date(self) -> int: ...
    @property
    def region(self) -> int: ...
    @property
    def insutype(self) -> int: ...
    @property
    def psn_type(self) -> int: ...
    @property
    def hosp_lv(self) -> int: ...
    @property
    def admission_no(self) -> int: ...

@final
class Person:
    def __new__(
        cls,
        *,
        age: int = 0,
        retired: bool = False,
        civil_servant: bool = False,
        cross_region: int = 0,
        assistance: bool = False,
        acct_used: bool = False,
        acct_balance: int = 0,
    ) -> Person: ...
    @property
    def age(self) -> int: ...
    @property
    def retired(self) -> bool: ...
    @property
    def civil_servant(self) -> bool: ...
    @property
    def cross_region(self) -> int: ...
    @property
    def assistance(self) -> bool: ...
    @property
    def acct_used(self) -> bool: ...
    @property
    def acct_balance(self) -> int: ...

@final
class Accumulators:
    def __new__(
        cls,
        *,
        inpatient_count: int = 0,
        dedc_paid: int = 0,
        hifp_paid: int = 0,
        hifp_base: int = 0,
        critical_base: int = 0,
        critical_paid: int = 0,
        cvlserv_paid: int = 0,
        maf_paid: int = 0,
    ) -> Accumulators: ...
    def to_dict(self) -> dict[str, int]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]
    @property
    def inpatient_count(self) -> int: ...
    @property
    def dedc_paid(self) -> int: ...
    @property
    def hifp_paid(self) -> int: ...
    @property
    def hifp_base(self) -> int: ...
    @property
    def critical_base(self) -> int: ...
    @property
    def critical_paid(self) -> int: ...
    @property
    def cvlserv_paid(self) -> int: ...
    @property
    def maf_paid(self) -> int: ...

@final
class Summary:
    def __new__(
        cls,
        *,
        medfee_sumamt: int,
        fulamt_ownpay_amt: int = 0,
        overlmt_amt: int = 0,
        preselfpay_amt: int = 0,
        inscp_scp_amt: int = 0,
        line_count: int = 0,
    ) -> Summary: ...
    @property
    def medfee_sumamt(self) -> int: ...
    @property
    def fulamt_ownpay_amt(self) -> int: ...
    @property
    def overlmt_amt(self) -> int: ...
    @property
    def preselfpay_amt(self) -> int: ...
    @property
    def inscp_scp_amt(self) -> int: ...
    @property
    def line_count(self) -> int: ...
    @property
    def by_category(self) -> list[list[int]]: ...

@final
class LineResults:
    def __len__(self) -> int: ...
    @property
    def item(self) -> _I64: ...
    @property
    def chrgitm_lv(self) -> npt.NDArray[np.uint8]: ...
    @property
    def fee_category(self) -> npt.NDArray[np.uint8]: ...
    @property
    def fulamt_ownpay_amt(self) -> _I64: ...
    @property
    def overlmt_amt(self) -> _I64: ...
    @property
    def preselfpay_amt(self) -> _I64: ...
    @property
    def inscp_scp_amt(self) -> _I64: ...
    @property
    def flags(self) -> npt.NDArray[np.uint16]: ...

@final
class FundLeg:
    @property
    def fund_pay_type(self) -> str: ...
    @property
    def base(self) -> int: ...
    @property
    def amount(self) -> int: ...
    @property
    def setl_proc_info(self) -> str: ...

@final
class SplitResult:
    @property
    def rule(self) -> int: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def accumulator_pool(self) -> str: ...
    @property
    def act_pay_dedc(self) -> int: ...
    @property
    def hifp_pay(self) -> int: ...
    @property
    def critical_pay(self) -> int: ...
    @property
    def critical_fund_pay_type(self) -> str: ...
    @property
    def cvlserv_pay(self) -> int: ...
    @property
    def maf_pay(self) -> int: ...
    @property
    def fund_pay_sumamt(self) -> int: ...
    @property
    def psn_part_amt(self) -> int: ...
    @property
    def acct_pay(self) -> int: ...
    @property
    def psn_cash_pay(self) -> int: ...
    @property
    def balc(self) -> int: ...
    @property
    def accumulators(self) -> Accumulators: ...
    @property
    def legs(self) -> list[FundLeg]: ...

def preprocess(
    catalog: Catalog, policy: Policy, lines: FeeLines, visit: Visit
) -> tuple[LineResults, Summary]: ...
def preprocess_batch(
    catalog: Catalog, policy: Policy, lines: BatchFeeLines, visits: VisitColumns
) -> tuple[LineResults, dict[str, npt.NDArray[np.int64]]]:
    """Per-visit int64 columns `medfee_sumamt`, `fulamt_ownpay_amt`, `overlmt_amt`,
    `preselfpay_amt`, `inscp_scp_amt`, `line_count`, and the fee-category sums in long form:
    `category_visit`, `category` (one row per visit and category that has lines, ordered by
    visit then category) and `category_sums` (rows x [total, fulamt, overlmt, preselfpay,
    inscp])."""

def split(
    policy: Policy,
    summary: Summary,
    selection: Selection,
    person: Person,
    accumulators: Accumulators,
) -> SplitResult: ...
def line_results_blob(
    catalog: Catalog,
    lines: LineResults,
    feedetl_sn: list[str],
    det_item_fee_sumamt: npt.NDArray[np.int64],
) -> bytes:
    """A settlement's per-line results blob (server/frontend/store/line_results.py)."""

def fee_line_results(
    catalog: Catalog,
    lines: LineResults,
    feedetl_sn: list[str],
    det_item_fee_sumamt: npt.NDArray[np.int64],
) -> bytes:
    """`UploadFeesResponse.results` encoded (field 5, the message's last), one
    `FeeLineResult` a line."""

FUND_NAMES: dict[str, str]
# The columns of ForwardDecision.settlements_copy, in order.
CENTER_SETTLEMENT_COLUMNS: list[str]
"""The name of each fund a settlement's legs are paid from, by fund_pay_type."""

def split_batch(policy: Policy, columns: SettlementColumns) -> dict[str, npt.NDArray[np.int64]]:
    """Columns `rule`, `act_pay_dedc`, each fund, `fund_pay_sumamt`, `psn_part_amt`,
    `acct_pay`, `psn_cash_pay`, `balc` and `new_<accumulator>`; absent input columns are
    zero / False."""

# 国密 (gm.rs): SM3, HMAC-SM3, SM3withSM2 signatures as 64-byte r||s, SM4 blocks.
SM2_DEFAULT_UID: str

@final
class FeeUpload:
    """A fee upload's messages read as they arrive (engine_rs/src/upload.rs): lines whose
    amount or unit price is beyond `max_line_fen` refuse their message (`add`); the
    serials', codes', dates' and flags' checks over the whole upload, and its columns;
    beyond `max_violations` of either kind nothing more is looked at."""

    def __new__(cls, max_line_fen: int, max_violations: int) -> FeeUpload: ...
    def add(self, data: bytes) -> list[tuple[str, str]]:
        """An UploadFeesRequest's lines (its bytes) added: the (field, reason) of each
        line refused for its amounts (none: accepted)."""
    def __len__(self) -> int: ...
    @property
    def line_violations(self) -> list[tuple[str, str]]: ...
    @property
    def feedetl_sn(self) -> list[str]: ...
    @property
    def medins_list_codg(self) -> list[str]: ...
    @property
    def med_list_codg(self) -> list[str]: ...
    @property
    def bilg_dr_codg(self) -> list[str]: ...
    @property
    def columns(self) -> FeeLines:
        """The lines as `preprocess` takes them (no insurance code: the mapping decides)."""
    @property
    def nums(self) -> npt.NDArray[np.int64]:
        """(lines, 5): cnt, pric, det_item_fee_sumamt, fee_ocur_date, hosp_appr_flag."""

@final
class Door:
    """A hot request read at the door from its wire bytes (engine_rs/src/door.rs):
    `bounds` is the longest value, in characters, of every bounded field by name;
    beyond `max_violations` a request is refused without looking further."""

    def __new__(cls, bounds: dict[str, int], max_violations: int) -> Door: ...
    def admit(
        self, type_name: str, method: str, data: bytes
    ) -> tuple[tuple[str, str, str, str, str, str] | None, bytes] | str | list[tuple[str, str]]:
        """(header, digest) for a request that passes: the header's msgid, fixmedins_code,
        opter, opter_name, sign_no, mdtrtarea_admvs (None for a type without a header),
        and SHA-256 of `method`, a NUL and the request's encoding without its sign_no;
        the decoder's reason for bytes that are not the message; else the (field, reason)
        violations of the bounds. ValueError for an unknown type."""

def sm3(data: bytes) -> bytes: ...
def hmac_sm3(key: bytes, data: bytes) -> bytes: ...
def signed_text(
    type_name: str, request: bytes, method: str, timestamp_ms: int, nonce: str
) -> bytes:
    """The canonical string (UTF-8) a call's signature covers: `request`, a message of
    `type_name` (e.g. medsettle.v1.SettleRequest) on the wire, in proto3 JSON form with
    `method`, `timestamp` and `nonce` (clients/signing.py); ValueError for an unknown type
    or malformed bytes."""

def sm2_public_key(secret: bytes) -> bytes: ...
def sm2_sign(secret: bytes, msg: bytes, uid: str = "1234567812345678") -> bytes: ...
def sm2_verify(public: bytes, msg: bytes, sig: bytes, uid: str = "1234567812345678") -> bool: ...
def sm4_encrypt_blocks(key: bytes, data: bytes) -> bytes: ...
def sm4_decrypt_blocks(key: bytes, data: bytes) -> bytes: ...
