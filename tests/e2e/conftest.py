"""Fixtures for the browser end-to-end tests (the harness, and why it is built this way, is
in tests/e2e/harness.py).

Nothing here skips: without Chromium, Playwright or a network namespace the tests fail
and say what is missing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.e2e.harness import (
    ARTIFACTS,
    CHROMIUM,
    SITE,
    SLUG,
    TITLE,
    NetNs,
    Server,
    launch_chromium,
    server_env,
    stop_process,
    wait_healthy,
)
from web.embedded_broker import free_port


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNs]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail(
            "the browser tests run the server and Chromium in a network namespace (loopback only),"
            " which needs root and iproute2's `ip`: run them as root (scripts/test.sh and CI do)",
            pytrace=False,
        )
    name = f"oc-e2e-{os.getpid()}-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"ip netns add {name}: {made.stderr.strip()}", pytrace=False)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield NetNs(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, netns: NetNs) -> Iterator[Server]:
    """`origincast serve --no-ingest` (no MQTT needed for video) with a SQLite database,
    the stream "farm-cam" made with the CLI (its publish key read from the output), and
    the demo test pattern on "demo"."""
    workdir = tmp_path_factory.mktemp("e2e-server")
    port = free_port()
    env = server_env(f"sqlite:///{workdir / 'origincast.db'}", port)
    out = subprocess.run(
        [sys.executable, "-m", "web", "streams", "add", SLUG, "--title", TITLE, "--site", SITE],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    match = re.search(r"^publish key: (\S+)$", out.stdout, re.M)
    assert match, out.stdout
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # `ip netns exec` execs the command: proc is the server itself, SIGTERM reaches it.
            [*netns.prefix(), sys.executable, "-m", "web", "serve", "--no-ingest"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    srv = Server(f"http://localhost:{port}", port, match.group(1), log_path, netns)
    try:
        wait_healthy(netns, port, proc)
        yield srv
    finally:
        code = stop_process(proc)
        # A clean shutdown (every peer connection closed in cleanup_ctx) exits 0.
        assert code == 0, f"serve exited with {code}:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package"
            " (bash scripts/test.sh installs it, or: apt-get install chromium)",
            pytrace=False,
        )
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(chromium_path: str, netns: NetNs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium inside the namespace: Playwright talks to it over pipes, not the network,
    so a wrapper that enters the namespace and execs Chromium is all it takes."""
    wrapper = tmp_path_factory.mktemp("chromium") / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns.name} {chromium_path} "$@"\n')
    wrapper.chmod(0o755)
    with launch_chromium(str(wrapper)) as b:
        yield b


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots for people to look at (test-artifacts/ at the repo root, not committed)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
