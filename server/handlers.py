"""Each RPC handler's wrapped form, made once: an interceptor that wraps a method's handler
(to count it, to limit a peer) would otherwise build a new namedtuple and closure on every
call, which costs more than the look-up (issue 15 step 23)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WrappedOnce:
    """`wrap(method, handler)`, kept per method while the continuation hands back the same
    handler object (one a continuation made anew for a call is wrapped anew). Only methods
    the server serves have a handler to wrap, so the cache is as large as the service."""

    def __init__(self, wrap: Callable[[str, Any], Any]) -> None:
        self._wrap = wrap
        self._made: dict[str, tuple[Any, Any]] = {}  # method -> (handler, its wrapped form)

    def __call__(self, method: str, handler: Any) -> Any:
        made = self._made.get(method)
        if made is None or made[0] is not handler:
            made = self._made[method] = (handler, self._wrap(method, handler))
        return made[1]
