"""A task a server process runs beside its calls (the forwarder, the reference-data puller):
started on the serving loop, cancelled and awaited when the process stops."""

from __future__ import annotations

import asyncio
import contextlib


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
