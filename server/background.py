"""A task a server process runs beside its calls (the forwarder, the reference-data puller):
started on the serving loop, cancelled and awaited when the process stops.

Also how such a task stops the whole process when it finds what no retry can fix (this
front-end's node id is another machine's, server/nodes.py): `stop_serving` logs the
reason at ERROR and stops the process as SIGTERM does (no new calls, those in flight finish,
the store is flushed); the worker then exits non-zero with the reason (`fatal_reason`), so a
supervisor or a night operator sees it stopped and why, instead of a front-end that goes on
settling what can never reach the center.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

log = logging.getLogger("medsettle")

_fatal: list[str] = []  # the reason this process stops, once one is known


def stop_serving(reason: str) -> None:
    """Stop this process for `reason` (the first reason wins; later calls only log)."""
    log.error("STOPPING: %s", reason)
    if not _fatal:
        _fatal.append(reason)
        os.kill(os.getpid(), signal.SIGTERM)


def fatal_reason() -> str | None:
    """Why `stop_serving` stopped this process, or None."""
    return _fatal[0] if _fatal else None


class Background:
    name = "background"
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
