"""An interceptor's wrapped handler is made once per method while the continuation hands
back the same handler (server/handlers.py), and anew when it hands back another."""

from __future__ import annotations

from typing import Any

from server.handlers import WrappedOnce


def test_a_handler_is_wrapped_once_and_a_new_one_anew() -> None:
    made: list[tuple[str, Any]] = []

    def wrap(method: str, handler: Any) -> Any:
        made.append((method, handler))
        return ("wrapped", method, handler)

    once = WrappedOnce(wrap)
    settle, ping = object(), object()
    first = once("/S/Settle", settle)
    assert once("/S/Settle", settle) is first
    assert once("/S/Ping", ping) == ("wrapped", "/S/Ping", ping)
    assert made == [("/S/Settle", settle), ("/S/Ping", ping)]
    other = object()  # a continuation that made a new handler: wrapped anew, kept instead
    assert once("/S/Settle", other) == ("wrapped", "/S/Settle", other)
    assert once("/S/Settle", other) is once("/S/Settle", other)
    assert len(made) == 3
