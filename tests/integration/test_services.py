"""The test services themselves: each one really serves, keeps what it must across a
restart, and enforces what production relies on (the per-device MQTT ACL)."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from scripts.services import (
    MOSQUITTO_COMPOSE_CONF,
    Mosquitto,
    Postgres,
    Timescale,
    render_compose_mosquitto_conf,
)

TIMEOUT_S = 10.0


class Client:
    """A paho 2.x client run in its own network thread, with blocking helpers."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str = "",
        *,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self._subscribed = threading.Event()
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.paho.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.paho.on_message = lambda c, u, msg: self.messages.put(msg)
        self.paho.on_subscribe = lambda c, u, mid, rcs, props: self._subscribed.set()
        # Refused connections must surface as a CONNACK code, not as endless retries.
        self.paho.reconnect_delay_set(60, 60)
        self.paho.connect(broker.host, broker.port, keepalive=30)
        self.paho.loop_start()

    def connected(self) -> mqtt.ReasonCode:
        return self.connack.get(timeout=TIMEOUT_S)

    def subscribe(self, topic: str) -> None:
        assert not self.connected().is_failure
        self.paho.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def test_mosquitto_qos1_round_trip(mosquitto: Mosquitto, clients: list[Client]) -> None:
    sub = Client(mosquitto)
    pub = Client(mosquitto)
    clients += [sub, pub]
    sub.subscribe("origincast/+/telemetry")
    assert not pub.connected().is_failure
    pub.publish("origincast/dev1/telemetry", b'{"ts": 1, "temp_c": 3.4}')
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (
        "origincast/dev1/telemetry",
        b'{"ts": 1, "temp_c": 3.4}',
        1,
    )


def test_mosquitto_queue_of_persistent_session_survives_restart(
    mosquitto: Mosquitto, clients: list[Client]
) -> None:
    session = f"ingest-{uuid.uuid4().hex[:8]}"
    topic = f"restart/{session}"
    first = Client(mosquitto, session, clean_session=False)
    first.subscribe(topic)
    first.close()

    pub = Client(mosquitto)
    clients.append(pub)
    assert not pub.connected().is_failure
    payloads = [f"reading {i}".encode() for i in range(5)]
    for payload in payloads:
        pub.publish(topic, payload)
    pub.close()
    clients.remove(pub)

    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port, "devices must find the broker where it was"

    again = Client(mosquitto, session, clean_session=False)
    clients.append(again)
    # No new SUBSCRIBE: the subscription and its queue come from the persistence file.
    assert not again.connected().is_failure
    assert [again.next_message().payload for _ in payloads] == payloads


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    users = {"dev1": "secret-1", "dev2": "secret-2", "origincast": "server-secret"}
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-acl"), users=users) as broker:
        yield broker


def test_mosquitto_password_file_holds_hashes(secured_broker: Mosquitto) -> None:
    text = secured_broker.password_file.read_text()
    assert "dev1:$7$" in text
    assert "secret-1" not in text


def test_device_may_publish_only_its_own_topic(secured_broker: Mosquitto, clients: list[Client]) -> None:
    server = Client(secured_broker, username="origincast", password="server-secret")
    dev1 = Client(secured_broker, username="dev1", password="secret-1")
    clients += [server, dev1]
    server.subscribe("origincast/#")
    assert not dev1.connected().is_failure

    # MQTT 3.1.1 has no way to refuse a PUBLISH: the broker acknowledges and drops it.
    # Messages from one publisher arrive in order, so if the forged one were delivered
    # it would come before the genuine one.
    dev1.publish("origincast/dev2/telemetry", b"forged")
    dev1.publish("origincast/dev1/telemetry", b"genuine")
    msg = server.next_message()
    assert (msg.topic, msg.payload) == ("origincast/dev1/telemetry", b"genuine")
    assert server.messages.empty()


def test_wrong_password_is_refused(secured_broker: Mosquitto, clients: list[Client]) -> None:
    intruder = Client(secured_broker, username="dev1", password="guess")
    clients.append(intruder)
    reason = intruder.connected()
    assert reason.is_failure
    assert reason.value in (4, 5, 0x86, 0x87), str(reason)  # bad credentials / not authorised


def test_anonymous_is_refused_when_users_are_configured(
    secured_broker: Mosquitto, clients: list[Client]
) -> None:
    anonymous = Client(secured_broker)
    clients.append(anonymous)
    assert anonymous.connected().is_failure


def test_compose_config_is_the_rendered_template() -> None:
    # docker-compose mounts a static file; it must not drift from the template.
    assert MOSQUITTO_COMPOSE_CONF.read_text() == render_compose_mosquitto_conf()


def test_postgres_accepts_connections(postgres: Postgres, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("show server_version_num").fetchone()
        fsync = conn.execute("show fsync").fetchone()
    assert version is not None and int(version[0]) // 10000 == 15
    assert fsync == ("on",)
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/")


def test_postgres_fresh_database_per_test(pg_url: str, postgres: Postgres) -> None:
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_postgres_committed_rows_survive_a_crash(pg_url: str, postgres: Postgres) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("create table r (id int primary key)")
        conn.execute("insert into r select generate_series(1, 100)")
    postgres.kill()
    postgres.start()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("select count(*) from r").fetchone() == (100,)
    postgres.crash_restart()
    postgres.restart()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("select count(*) from r").fetchone() == (100,)


def test_timescale_extension_available_with_apache_license(ts_url: str) -> None:
    with psycopg.connect(ts_url, autocommit=True) as conn:
        available = conn.execute(
            "select default_version from pg_available_extensions where name = 'timescaledb'"
        ).fetchone()
        assert available is not None, "timescaledb not in pg_available_extensions"
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        license_row = conn.execute("select current_setting('timescaledb.license')").fetchone()
        major = conn.execute("show server_version_num").fetchone()
        conn.execute("create table m (ts timestamptz not null, v real)")
        conn.execute("select create_hypertable('m', 'ts')")
    assert license_row == ("apache",)
    assert major is not None and int(major[0]) // 10000 == 17


def test_timescale_survives_restarts(ts_url: str, timescale: Timescale) -> None:
    with psycopg.connect(ts_url, autocommit=True) as conn:
        conn.execute("create table r (id int)")
        conn.execute("insert into r values (1)")
    timescale.crash_restart()
    timescale.kill()
    timescale.start()
    with psycopg.connect(ts_url) as conn:
        assert conn.execute("select count(*) from r").fetchone() == (1,)


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path / 'origincast.db'}"


def test_db_url_gives_each_backend(db_url: str) -> None:
    assert db_url.startswith(("sqlite:///", "postgresql://postgres@127.0.0.1:"))
