"""`origincast serve` over HTTPS: phones give the camera only to secure pages, so an operator
without a TLS proxy runs `serve --certfile … --keyfile …` (or sets
ORIGINCAST_HTTP_CERTFILE/KEYFILE). A self-signed certificate made here with
`cryptography` stands in for a real one.

These servers carry no WebRTC (no page starts a camera or a player here), so they and
the browser stay in the normal network namespace, on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.harness import PHONE, launch_chromium, server_env, stop_process
from tests.support.processes import REPO
from web.embedded_broker import free_port

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True, slots=True)
class Tls:
    certfile: Path
    keyfile: Path
    other_keyfile: Path  # a valid key that does not belong to the certificate


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    d = tmp_path_factory.mktemp("tls")
    key = _write_key(d / "key.pem")
    _write_key(d / "other-key.pem")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Tls(d / "cert.pem", d / "key.pem", d / "other-key.pem")


@pytest.fixture
def https_server(tmp_path: Path, tls: Tls) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    """serve with --certfile/--keyfile on the command line."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = server_env(
        f"sqlite:///{tmp_path / 'origincast.db'}", port, ORIGINCAST_STREAM_DEMO_TEST_PATTERN="false"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "web", "serve", "--no-ingest",
                "--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile),
            ],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield port, proc, log
    finally:
        assert stop_process(proc) == 0, log.read_text(errors="replace")[-3000:]


def _wait_tls(url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited: {log.read_text(errors='replace')[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer over TLS: {log.read_text(errors='replace')[-2000:]}")


def test_serve_answers_over_tls_with_certfile_and_keyfile(https_server, tls):
    port, proc, log = https_server
    trusted = ssl.create_default_context(cafile=str(tls.certfile))  # our certificate, verified
    _wait_tls(f"https://127.0.0.1:{port}/healthz", trusted, proc, log)
    with urllib.request.urlopen(f"https://localhost:{port}/publish/farm-cam", context=trusted) as r:
        assert r.status == 200
        assert "Content-Security-Policy" in r.headers
        page = r.read().decode()
    assert '<script type="module" src="/static/publish.js"></script>' in page
    # TLS only on that port: plain HTTP gets no answer.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "pages: https://127.0.0.1:" in log.read_text(errors="replace")


def test_https_from_the_environment_is_a_secure_page_in_chromium(tmp_path, tls, chromium_path):
    port = free_port()
    env = server_env(
        f"sqlite:///{tmp_path / 'origincast.db'}",
        port,
        ORIGINCAST_HTTP_CERTFILE=str(tls.certfile),
        ORIGINCAST_HTTP_KEYFILE=str(tls.keyfile),
        ORIGINCAST_STREAM_DEMO_TEST_PATTERN="false",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web", "serve", "--no-ingest"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_tls(
            f"https://127.0.0.1:{port}/healthz",
            ssl.create_default_context(cafile=str(tls.certfile)),
            proc,
            log,
        )
        with launch_chromium(chromium_path) as browser:
            # Our self-signed certificate is not in Chromium's store; a real one would be.
            context = browser.new_context(viewport=PHONE, ignore_https_errors=True, locale="en-US")
            page = context.new_page()
            # 127.0.0.1 is secure even over http; a LAN address would not be: use the
            # certificate's other name to show the page is secure because of TLS.
            page.goto(f"https://localhost:{port}/publish/farm-cam")
            assert page.evaluate("window.isSecureContext") is True
            assert page.evaluate("location.protocol") == "https:"
            assert page.evaluate("typeof navigator.mediaDevices?.getUserMedia") == "function"
            assert page.locator("h1").inner_text() == "Go live from this phone"
            context.close()
    finally:
        assert stop_process(proc) == 0, log.read_text(errors="replace")[-3000:]


def _serve_fails(tmp_path: Path, *args: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "web", "serve", "--no-ingest", *args],
        cwd=REPO,
        env=server_env(f"sqlite:///{tmp_path / 'x.db'}", free_port(), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    return out.stderr


def test_tls_mistakes_are_named(tmp_path, tls):
    half = _serve_fails(tmp_path, ORIGINCAST_HTTP_CERTFILE=str(tls.certfile))
    assert "ORIGINCAST_HTTP_KEYFILE: HTTPS needs both a certificate and its key" in half

    missing = _serve_fails(tmp_path, "--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(tls.keyfile))
    assert "is not a readable file" in missing and "nope.pem" in missing

    mismatched = _serve_fails(tmp_path, "--certfile", str(tls.certfile), "--keyfile", str(tls.other_keyfile))
    assert "not a PEM certificate and its matching private key" in mismatched
