"""Client errors as precise gRPC statuses.

Domain code raises `ClientError` subclasses; the service layer turns them into a status with
a `google.rpc.Status` in the trailing metadata (a `BadRequest` with one field violation per
bad field for INVALID_ARGUMENT), which the SDK unpacks. A client error never becomes
INTERNAL, and a call that raises one has written nothing (the store rolls its savepoint back).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ClientError(Exception):
    """A request the server refuses; `code` is the gRPC status it answers with."""

    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    audited = False  # an audit record of this refusal is written (server/auditing.py)

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations or []

    def to_status(self) -> grpc.Status:
        detail = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            detail.details.append(packed)
        return rpc_status.to_status(detail)


class InvalidArgument(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ClientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(ClientError):
    """An answer that would not fit its field (a sum beyond int64): a narrower question
    (a shorter date range) may be answered."""

    code = grpc.StatusCode.OUT_OF_RANGE


def field_error(field: str, reason: str) -> InvalidArgument:
    """INVALID_ARGUMENT naming one field: `field: reason`."""
    return InvalidArgument(f"{field}: {reason}", [(field, reason)])


class Violations:
    """Collects field violations of one request, raised together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, reason: str) -> None:
        self.items.append((field, reason))

    def require(self, ok: bool, field: str, reason: str) -> None:
        if not ok:
            self.add(field, reason)

    def raise_if_any(self) -> None:
        if self.items:
            head = "; ".join(f"{f}: {r}" for f, r in self.items[:5])
            more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise InvalidArgument(head + more, self.items)


def refuse_fields(items: list[tuple[str, str]]) -> None:
    """INVALID_ARGUMENT for these (field, reason) violations, if any, as Violations raises
    them (found by the engine: the door, engine_rs.FeeUpload)."""
    v = Violations()
    v.items = items
    v.raise_if_any()


class Unavailable(ClientError):
    code = grpc.StatusCode.UNAVAILABLE


class Relayed(ClientError):
    """A refusal from an upstream server (the center), passed on with its code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_BY_CODE: dict[str, type[ClientError]] = {
    c.code.name: c
    for c in (InvalidArgument, NotFound, FailedPrecondition, AlreadyExists, Unavailable)
}


def refusal(exc: Any) -> ClientError:
    """The client error of an `engine_rs.Refused` (a ledger operation's refusal: its status
    name, message, and for INVALID_ARGUMENT the field and reason)."""
    cls = _BY_CODE[exc.code]
    violations = [(exc.field, exc.reason)] if exc.field is not None else None
    return cls(exc.message, violations)


class StartError(Exception):
    """Why a server cannot start, in one line for its operator (server/app.py prints it)."""
