"""`origincast serve` and `origincast demo` as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.processes import REPO, wait_until
from web.app import build_app
from web.config import load_config
from web.embedded_broker import free_port


def _publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    for p in payloads:
        c.publish(topic, p, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


async def test_health_ready_and_metrics(aiohttp_client, mosquitto, sqlite_url):
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"serve-{uuid.uuid4().hex[:8]}",
        }
    )
    client = await aiohttp_client(build_app(config))
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    for _ in range(100):
        if await ready():
            break
        await asyncio.sleep(0.1)
    body = await (await client.get("/readyz")).json()
    assert body["status"] == "ready" and body["broker_connected"] and body["database"] == "sqlite"

    good = [json.dumps({"ts": 1_760_000_000_000 + i, "temp_c": 4.0}).encode() for i in range(30)]
    await asyncio.to_thread(
        _publish, mosquitto.host, mosquitto.port, "origincast/serve-dev/telemetry", [*good, b"nonsense"]
    )

    async def metric(name: str) -> float:
        text = await (await client.get("/metrics")).text()
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else -1.0

    for _ in range(100):
        if await metric("origincast_ingest_readings_stored_total") == 30:
            break
        await asyncio.sleep(0.1)
    assert await metric("origincast_ingest_readings_stored_total") == 30
    assert await metric('origincast_ingest_rejected_total{reason="malformed_json"}') == 1
    assert await metric("origincast_ingest_messages_received_total") == 31
    text = await (await client.get("/metrics")).text()
    for name in ("origincast_ingest_batch_messages_bucket", "origincast_ingest_lag_seconds"):
        assert name in text


def test_readyz_says_broker_is_down(tmp_path):
    """No broker at the URL: the server still starts, /healthz answers, /readyz says 503."""
    import urllib.error
    import urllib.request

    port = free_port()
    env = {
        **os.environ,
        "ORIGINCAST_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "ORIGINCAST_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
        "ORIGINCAST_HTTP_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    try:

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
            except OSError:
                return False

        assert wait_until(up, 30)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            raise AssertionError("/readyz said ready without a broker")
        except urllib.error.HTTPError as err:
            assert err.code == 503
            body = json.loads(err.read())
            assert body["broker_connected"] is False and body["status"] == "not ready"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_port_out_of_range_is_named():
    env = {**os.environ, "ORIGINCAST_HTTP_PORT": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert "ORIGINCAST_HTTP_PORT" in out.stderr


def test_bad_configuration_is_a_clear_error():
    env = {**os.environ, "ORIGINCAST_MQTT_URL": "http://broker"}
    out = subprocess.run(
        [sys.executable, "-m", "web", "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "configuration error: ORIGINCAST_MQTT_URL: expected mqtt://" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_shows_readings_arriving(tmp_path):
    """The README's first command, with nothing else running: readings arrive, and the
    printed console login, watch page and trust page work while it runs."""
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "web", "demo", "--port", str(port), "--interval", "0.5", "--duration", "12"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "trust page" in line:
                break
        printed = "".join(lines)
        login = re.search(r"/console · log in as (\S+) / (\S+)$", printed, re.M)
        trust = re.search(r"(http://\S+/v/(\S+))#k=(\S+)$", printed, re.M)
        assert login and trust, printed
        base = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(
            f"{base}/api/v1/session",
            data=json.dumps({"name": login[1], "password": login[2]}).encode(),
            headers={"Content-Type": "application/json", "Origin": base},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["role"] == "admin"
        with urllib.request.urlopen(f"{base}/watch/demo", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/api/v1/public/shipments/{trust[2]}", timeout=20) as r:
            assert json.loads(r.read())["shipment"]["id"] == trust[2]
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = printed + rest
    assert proc.returncode == 0, err[-2000:]
    counts = [int(m) for m in re.findall(r"\] (\d+) readings stored", out)]
    assert counts and counts[-1] > counts[0] >= 0 and counts[-1] >= 20, out
    assert "truck-7" in out and "freezer-1" in out
    assert (tmp_path / "origincast.db").exists()
    assert oct((tmp_path / "origincast-demo-log.key").stat().st_mode & 0o777) == "0o600"
    assert "Traceback" not in err


def test_migrate_command(pg_url):
    env = {**os.environ, "ORIGINCAST_DATABASE_URL": pg_url}
    first = subprocess.run(
        [sys.executable, "-m", "web", "migrate"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert "postgres: applied 0001_readings" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "web", "migrate"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert "up to date" in again.stdout
