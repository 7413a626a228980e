"""Start and stop a medsettle server as a child process on loopback (the demo, the tests
and the benchmarks use it): pick a free port, wait until health says SERVING, stop with
SIGTERM (drain) or SIGKILL (crash tests)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]  # the repository (or site-packages) root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    def __init__(
        self,
        db: str | Path,
        *,
        port: int = 0,
        workers: int = 1,
        demo: bool = True,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.db = str(db)
        self.port = port or free_port()
        self.workers = workers
        self.demo = demo
        self.extra = extra or []
        self.env = env or {}
        self.log_path = log
        self.credentials = credentials  # a TLS server: how to reach it (health checks)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalServer:
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--db",
            self.db,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *(["--demo"] if self.demo else []),
            *self.extra,
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, **self.env}
        if "center" in self.extra and not {"MEDSETTLE_DATA_KEY", "MEDSETTLE_DATA_KEY_FILE"} & set(
            env
        ):
            env["MEDSETTLE_DATA_KEY_FILE"] = str(self.center_key_file())
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.wait_serving(timeout)
        return self

    def demo_password(self) -> str:
        """The demo operators' password of this server's demo database (server/demo/dataset.py
        writes it beside the database when it loads the demo data set)."""
        from server.demo import dataset as demo_data

        return demo_data.read_password(self.db)

    def center_key_file(self) -> Path:
        """A center needs its data key given (it has no directory of its own to make one
        in); a local center gets one per database, kept across restarts, in the system's
        temporary directory."""
        from server.security import datakeys

        d = Path(tempfile.gettempdir()) / "medsettle-center-keys"
        d.mkdir(mode=0o700, exist_ok=True)
        path = d / (hashlib.sha256(self.db.encode()).hexdigest()[:16] + ".key")
        with contextlib.suppress(FileExistsError):
            datakeys.create(path)
        return path

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ch = (
            grpc.secure_channel(self.target, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(self.target)
        )
        with ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} before serving")
                try:
                    req = health_pb2.HealthCheckRequest(service="")
                    r = stub.Check(req, timeout=1)  # type: ignore[attr-defined]
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        if self.workers > 1:
                            time.sleep(1.0)  # the other workers bind within this
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server on {self.target} not serving after {timeout}s")
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: in-flight calls finish, then the process exits; returns its code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (workers included): a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
