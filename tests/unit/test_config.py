from __future__ import annotations

import re

import pytest

from web.config import ConfigError, load_config


def test_defaults_need_no_service():
    c = load_config(env={})
    assert c.storage.url.startswith("sqlite:///")
    assert c.mqtt_url is None
    assert c.http.port == 8080


def test_env_urls_parsed():
    c = load_config(
        env={
            "ORIGINCAST_MQTT_URL": "mqtt://ingest:s%40cret@broker.local:1884",
            "ORIGINCAST_DATABASE_URL": "postgresql://app@db:5433/origincast",
        }
    )
    m = c.ingest.mqtt
    assert (m.host, m.port, m.username, m.password, m.tls) == (
        "broker.local",
        1884,
        "ingest",
        "s@cret",
        False,
    )
    assert c.storage.url == "postgresql://app@db:5433/origincast"
    assert "s@cret" not in repr(c) and "s%40cret" not in repr(c)


def test_mqtts_defaults_to_8883():
    m = load_config(env={"ORIGINCAST_MQTT_URL": "mqtts://b.example"}).ingest.mqtt
    assert (m.port, m.tls) == (8883, True)


def test_toml_then_env_override(tmp_path):
    f = tmp_path / "o.toml"
    f.write_text("[ingest]\nbatch_max_rows = 100\nbatch_max_delay_ms = 20\n[http]\nport = 9000\n")
    c = load_config(f, env={"ORIGINCAST_HTTP_PORT": "9100"})
    assert c.ingest.batch_max_rows == 100
    assert c.ingest.batch_max_delay_s == pytest.approx(0.02)
    assert c.http.port == 9100


def test_evidence_batches_reach_the_storage_settings(tmp_path):
    default = load_config(env={}).storage
    assert (default.evidence_batch_max_span_s, default.evidence_batch_max_readings) == (900.0, 1000)
    f = tmp_path / "o.toml"
    f.write_text("[evidence]\nbatch_max_span_s = 3600\nbatch_max_readings = 200\n")
    c = load_config(f, env={"ORIGINCAST_EVIDENCE_BATCH_MAX_READINGS": "60"})
    assert (c.storage.evidence_batch_max_span_s, c.storage.evidence_batch_max_readings) == (3600.0, 60)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORIGINCAST_MQTT_URL": "http://broker"}, "ORIGINCAST_MQTT_URL: expected mqtt://"),
        ({"ORIGINCAST_MQTT_URL": "mqtt://broker:70000"}, "not a number from 1 to 65535"),
        ({"ORIGINCAST_MQTT_URL": "mqtt://"}, "no host"),
        ({"ORIGINCAST_DATABASE_URL": "mysql://x/y"}, "expected postgresql://"),
        ({"ORIGINCAST_DATABASE_URL": "sqlite://"}, "expected sqlite:///"),
        ({"ORIGINCAST_HTTP_PORT": "eighty"}, "ORIGINCAST_HTTP_PORT: expected a whole number"),
        ({"ORIGINCAST_INGEST_BATCH_MAX_ROWS": "0"}, "must be greater than 0"),
        ({"ORIGINCAST_INGEST_RECEIVE_MAXIMUM": "70000"}, "at most 65535"),
        ({"ORIGINCAST_MQTT_PROTOCOL": "4"}, "expected '5' or '3.1.1'"),
        ({"ORIGINCAST_EVIDENCE_BATCH_MAX_SPAN_S": "0"}, "BATCH_MAX_SPAN_S: must be greater than 0"),
        ({"ORIGINCAST_EVIDENCE_BATCH_MAX_READINGS": "-1"}, "must be greater than 0"),
        ({"ORIGINCAST_HTTP_PUBLIC_BURST": "0"}, "ORIGINCAST_HTTP_PUBLIC_BURST: must be at least 1"),
        ({"ORIGINCAST_HTTP_PUBLIC_RATE_PER_S": "-2"}, "ORIGINCAST_HTTP_PUBLIC_RATE_PER_S: must be 0 (off)"),
    ],
)
def test_bad_values_are_named(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env=env)


def test_infinite_and_nan_numbers_are_named(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[http]\nport = inf\n")
    with pytest.raises(ConfigError, match="expected a whole number, got inf"):
        load_config(path=f, env={})
    with pytest.raises(ConfigError, match="ORIGINCAST_HTTP_PUBLIC_RATE_PER_S: expected a finite number"):
        load_config(env={"ORIGINCAST_HTTP_PUBLIC_RATE_PER_S": "nan"})


def test_bad_toml_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[ingest\n")
    with pytest.raises(ConfigError, match=re.escape("bad.toml")):
        load_config(f, env={})
    g = tmp_path / "unknown.toml"
    g.write_text("[ingest]\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match=re.escape("unknown setting ingest.batchsize")):
        load_config(g, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
