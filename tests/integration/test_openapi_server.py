"""The running server answers as its OpenAPI document says (schemathesis).

A real `origincast serve` (PostgreSQL, mosquitto, the alert engine) is called with
inputs generated from /api/v1/openapi.json, valid and invalid: no answer may be a
server error, and every status code, content type and body must be one the document
describes. Authenticated as an admin so that writes are exercised, not only refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from scripts.services import free_port
from telemetry.evidence.keys import init_key
from tests.support.processes import REPO, wait_until

ADMIN_TOKEN = "openapi-test-admin-token-0123456789"


@pytest.fixture
def api_schema(pg_url: str, mosquitto, tmp_path) -> Iterator[schemathesis.schemas.BaseSchema]:
    port = free_port()
    key_file = tmp_path / "log.key"
    init_key(key_file, "openapi.test/log")
    env = {
        **os.environ,
        "ORIGINCAST_DATABASE_URL": pg_url,
        "ORIGINCAST_MQTT_URL": mosquitto.url,
        "ORIGINCAST_HTTP_HOST": "127.0.0.1",
        "ORIGINCAST_HTTP_PORT": str(port),
        "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
        "ORIGINCAST_FILES_DIR": str(tmp_path / "files"),
        "ORIGINCAST_EVIDENCE_KEY_FILE": str(key_file),
        # schemathesis also calls every protected operation without credentials and
        # with wrong ones (it checks they are refused); with the production delay and
        # lockout those hundreds of failures would stall the run and lock it out.
        "ORIGINCAST_AUTH_FAILURE_BASE_DELAY_S": "0",
        "ORIGINCAST_AUTH_FAILURE_MAX_DELAY_S": "0.01",
        "ORIGINCAST_AUTH_LOCKOUT_AFTER": "1000000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200
        except OSError:
            return False

    try:
        assert wait_until(ready, 60), "origincast serve did not become ready"
        yield schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    finally:
        proc.terminate()
        proc.wait(30)


def test_server_matches_its_openapi_document(api_schema) -> None:
    # Each operation gets its own hypothesis run (schemathesis's pytest plugin does not
    # work with this pytest). The WebSocket feed is left out: schemathesis speaks plain
    # HTTP, and test_live.py covers it.
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) > 10, "the document describes too little: is the server's document empty?"
    failures: list[str] = []
    for op in operations:
        if op.path == "/api/v1/live":
            continue

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=20,
                # Bodies valid by the schema may still break a rule that spans fields (an
                # rtsp stream needs rtsp_url, a slug already taken): those answer a
                # documented 409/422, which this check would count as a failure.
                excluded_checks=[positive_data_acceptance],
            )

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, then fail once
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)
