"""Start and watch the processes an integration test runs: ingesters and publishers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class IngesterProcess:
    """`origincast ingest` as a child process, its log kept in memory for assertions."""

    def __init__(self, database_url: str, mqtt_url: str, client_id: str, *extra: str, **env: str) -> None:
        self.args = [sys.executable, "-m", "web", "ingest", "--client-id", client_id, *extra]
        self.env = {
            **os.environ,
            "ORIGINCAST_DATABASE_URL": database_url,
            "ORIGINCAST_MQTT_URL": mqtt_url,
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self, wait_subscribed: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line.rstrip())
                if "subscribed to" in line:
                    seen.set()

        threading.Thread(target=pump, daemon=True).start()
        if not seen.wait(wait_subscribed):
            self.stop()
            raise AssertionError("ingester did not subscribe in time:\n" + "\n".join(self.log[-30:]))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean, flushing shutdown); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"ingester did not stop within {timeout:.0f} s of SIGTERM") from None


def start_publishers(
    host: str, port: int, devices: list[str], per_device: int, base_ms: int
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.publisher",
                host,
                str(port),
                d,
                str(per_device),
                str(base_ms),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in devices
    ]


def wait_publishers(pubs: list[subprocess.Popen[str]], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    for p in pubs:
        out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert p.returncode == 0, f"publisher failed: {out}"


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
