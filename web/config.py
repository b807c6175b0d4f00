"""Configuration in one place: a TOML file, then ORIGINCAST_* environment variables.

Every value has a default, a type and a check; a bad value stops start-up with a message
that names the setting, what was given and what is expected. The result is split into
each core package's typed settings, so stream/ and telemetry/ never read files or the
environment themselves.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from stream.settings import IceServer, StreamSettings
from telemetry.alerts.settings import AlertServiceSettings, WebhookSettings
from telemetry.files import FilesSettings
from telemetry.settings import IngestSettings, MqttSettings, PayloadLimits, StorageSettings
from web.tsa import TsaSettings


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and why."""


T = TypeVar("T")
_Values = Mapping[tuple[str, str], object]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # PEM certificate chain and its private key: with both, `serve` speaks HTTPS (phones
    # give the camera only to secure pages). Neither: plain HTTP, e.g. behind a TLS proxy.
    certfile: str | None = None
    keyfile: str | None = None
    # The address customers reach us at (QR codes on packages point there), e.g.
    # "https://trust.example.com"; None: taken from each request's Host.
    public_url: str | None = None
    # Each client address's allowance on the public shipment endpoints: a burst, refilled
    # at a rate (web.rate_limit). Behind a reverse proxy every customer has the proxy's
    # address: raise these, or set the rate to 0 (off) and limit in the proxy.
    public_burst: float = 120.0
    public_rate_per_s: float = 2.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Logins and sessions (web.auth, web.accounts)."""

    # Mark the session cookie Secure even on plain HTTP: for a TLS proxy in front, which
    # we cannot tell from the request (X-Forwarded-Proto is not trusted).
    cookie_secure: bool = False
    session_idle_s: float = 12 * 3600.0
    session_absolute_s: float = 7 * 24 * 3600.0
    # The growing delay after a failed login or token: base, doubled per failure, capped.
    failure_base_delay_s: float = 0.1
    failure_max_delay_s: float = 5.0
    # After this many failures in a row from one address it is refused (429) for a minute.
    lockout_after: int = 20
    # argon2id cost (RFC 9106's second profile by default). Raising them takes effect for
    # each user at their next login, when the password is rehashed.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 64 * 1024
    argon2_parallelism: int = 4


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpSettings = field(default_factory=HttpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    # None: no broker configured (the demo then starts an embedded one).
    mqtt_url: str | None = field(default=None, repr=False)
    stream: StreamSettings = field(default_factory=StreamSettings)
    # Publish the built-in test pattern on the stream "demo" (`origincast demo` sets it).
    demo_test_pattern: bool = False
    # Bearer token for the admin API's writes (streams); None: writes are disabled.
    admin_token: str | None = field(default=None, repr=False)
    alerts: AlertServiceSettings = field(default_factory=AlertServiceSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    # Signs share links of unlisted streams (web.share); None: a key generated once and
    # kept in the stream registry's database.
    secret_key: str | None = field(default=None, repr=False)
    # Test reports and origin photos (telemetry.files).
    files: FilesSettings = field(default_factory=FilesSettings)
    # The evidence log's signing key file (`origincast keys init`); "": none, nothing signed.
    evidence_key_file: str = ""
    # A checkpoint is signed this often while the log grows (and at each shipment's close).
    evidence_checkpoint_interval_s: float = 60.0
    # RFC 3161 timestamps of the checkpoint signed at each shipment's close (web.tsa).
    evidence_tsa: TsaSettings = field(default_factory=TsaSettings)


# (section, key) -> (type, default). Env name: ORIGINCAST_<SECTION>_<KEY>, except the two
# URLs, which keep the short names operators expect.
_SCHEMA: dict[tuple[str, str], tuple[type, object]] = {
    ("http", "host"): (str, "127.0.0.1"),
    ("http", "port"): (int, 8080),
    ("http", "certfile"): (str, ""),
    ("http", "keyfile"): (str, ""),
    ("database", "url"): (str, "sqlite:///origincast.db"),
    ("database", "retention_days"): (int, 400),
    ("database", "chunk_interval_hours"): (int, 24),
    ("mqtt", "url"): (str, ""),
    ("mqtt", "protocol"): (str, "5"),
    ("ingest", "client_id"): (str, "origincast-ingest"),
    ("ingest", "shared_group"): (str, ""),
    ("ingest", "batch_max_rows"): (int, 5000),
    ("ingest", "batch_max_delay_ms"): (int, 50),
    ("ingest", "batch_max_bytes"): (int, 1024 * 1024),
    ("ingest", "receive_maximum"): (int, 65535),
    ("ingest", "max_payload_bytes"): (int, 256 * 1024),
    ("ingest", "max_future_s"): (float, 300.0),
    # Comma-separated in the environment, a list or a comma-separated string in TOML.
    ("stream", "ice_host_addresses"): (tuple, ()),
    ("stream", "ice_public_address"): (str, ""),
    ("stream", "ice_servers"): (tuple, ()),  # stun:host:port, turn:host:port?transport=udp
    ("stream", "turn_username"): (str, ""),
    ("stream", "turn_credential"): (str, ""),
    ("stream", "video_bitrate_bps"): (int, 1_500_000),
    ("stream", "keyframe_interval_s"): (float, 2.0),
    ("stream", "viewer_queue_packets"): (int, 300),
    ("stream", "test_pattern_width"): (int, 1280),
    ("stream", "test_pattern_height"): (int, 720),
    ("stream", "test_pattern_fps"): (int, 30),
    ("stream", "demo_test_pattern"): (bool, False),
    ("stream", "fast_sender"): (bool, True),
    ("admin", "token"): (str, ""),
    ("auth", "cookie_secure"): (bool, False),
    ("auth", "session_idle_hours"): (float, 12.0),
    ("auth", "session_absolute_hours"): (float, 168.0),
    ("auth", "failure_base_delay_s"): (float, 0.1),
    ("auth", "failure_max_delay_s"): (float, 5.0),
    ("auth", "lockout_after"): (int, 20),
    ("auth", "argon2_time_cost"): (int, 3),
    ("auth", "argon2_memory_kib"): (int, 64 * 1024),
    ("auth", "argon2_parallelism"): (int, 4),
    ("http", "secret_key"): (str, ""),
    ("http", "public_url"): (str, ""),
    ("http", "public_burst"): (float, 120.0),
    ("http", "public_rate_per_s"): (float, 2.0),
    ("files", "dir"): (str, "origincast-files"),
    ("files", "max_bytes"): (int, 20 * 1024 * 1024),
    ("evidence", "key_file"): (str, ""),
    ("evidence", "checkpoint_interval_s"): (float, 60.0),
    # The timestamp authority (RFC 3161 over HTTP) asked at each close; "": none.
    ("evidence", "tsa_url"): (str, ""),
    ("evidence", "tsa_timeout_s"): (float, 10.0),
    ("evidence", "tsa_retry_s"): (float, 60.0),
    # A readings_batch leaf: one device's readings within this much reading time (and
    # sealed at the latest this long after it opened), at most this many.
    ("evidence", "batch_max_span_s"): (float, 900.0),
    ("evidence", "batch_max_readings"): (int, 1000),
    # Comma-separated http(s) URLs that receive every alert event, signed with the secret.
    ("alerts", "webhooks"): (tuple, ()),
    ("alerts", "webhook_secret"): (str, ""),
}
_SHORT_ENV = {
    ("database", "url"): "ORIGINCAST_DATABASE_URL",
    ("mqtt", "url"): "ORIGINCAST_MQTT_URL",
    ("admin", "token"): "ORIGINCAST_ADMIN_TOKEN",
    ("http", "secret_key"): "ORIGINCAST_SECRET_KEY",
}


def _env_name(section: str, key: str) -> str:
    return _SHORT_ENV.get((section, key), f"ORIGINCAST_{section.upper()}_{key.upper()}")


def _coerce(name: str, kind: type, value: object) -> object:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name}: expected a list of text or comma-separated text, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    # Text (the environment, TOML strings) or a TOML number; a TOML table, array or date
    # is none. A bool is an int to Python but no whole number here.
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (ValueError, OverflowError):  # OverflowError: TOML's inf
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if kind is float:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # no setting of ours means nan or an infinity
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected text, got {value!r}")
    return value


def _raw_values(toml: Mapping[str, object], env: Mapping[str, str]) -> dict[tuple[str, str], object]:
    values: dict[tuple[str, str], object] = {}
    for section, table in toml.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file: [{section}] must be a table")
        for key, value in table.items():
            if (section, key) not in _SCHEMA:
                raise ConfigError(f"config file: unknown setting {section}.{key}")
            kind = _SCHEMA[(section, key)][0]
            values[(section, key)] = _coerce(f"{section}.{key}", kind, value)
    for (section, key), (kind, _default) in _SCHEMA.items():
        name = _env_name(section, key)
        if name in env:
            values[(section, key)] = _coerce(name, kind, env[name])
    return values


# The values are already of their _SCHEMA type (defaults as written, the rest through
# _coerce): these read them back typed. A mismatch is a bug in _SCHEMA, not bad input.
def _typed(v: _Values, section: str, key: str, kind: type[T]) -> T:
    value = v[(section, key)]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{section}.{key}: {value!r} is not {kind.__name__} as _SCHEMA says")
    return value


def _number(v: _Values, section: str, key: str) -> float:
    kind = _SCHEMA[(section, key)][0]
    if kind is int:
        return _typed(v, section, key, int)
    return _typed(v, section, key, float)


def _texts(v: _Values, section: str, key: str) -> tuple[str, ...]:
    return tuple(str(i) for i in _typed(v, section, key, tuple))


def parse_mqtt_url(url: str, name: str = "ORIGINCAST_MQTT_URL") -> MqttSettings:
    """mqtt://user:pass@host:port (mqtts:// for TLS) -> MqttSettings."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{name}: expected mqtt://[user:pass@]host[:port] or mqtts://…, got {url!r}")
    if not parts.hostname:
        raise ConfigError(f"{name}: no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{name}: the port in {url!r} is not a number from 1 to 65535") from None
    tls = parts.scheme == "mqtts"
    return MqttSettings(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def check_database_url(url: str, name: str = "ORIGINCAST_DATABASE_URL") -> str:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ConfigError(
                f"{name}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}"
            )
        return url
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"{name}: no host in {url!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(f"{name}: the port in {url!r} is not a number from 1 to 65535") from None
        return url
    raise ConfigError(f"{name}: expected postgresql://user@host:port/db or sqlite:///path.db, got {url!r}")


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    path = path or env.get("ORIGINCAST_CONFIG") or None
    toml: dict[str, object] = {}
    if path:
        try:
            toml = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    v = {k: d for k, (_t, d) in _SCHEMA.items()} | _raw_values(toml, env)

    def positive(section: str, key: str) -> None:
        if _number(v, section, key) <= 0:
            raise ConfigError(f"{_env_name(section, key)}: must be greater than 0, got {v[(section, key)]!r}")

    for sk in [
        ("http", "port"),
        ("database", "retention_days"),
        ("ingest", "batch_max_rows"),
        ("ingest", "batch_max_delay_ms"),
        ("ingest", "batch_max_bytes"),
        ("ingest", "receive_maximum"),
        ("ingest", "max_payload_bytes"),
        ("database", "chunk_interval_hours"),
        ("evidence", "batch_max_span_s"),
        ("evidence", "batch_max_readings"),
    ]:
        positive(*sk)
    if not 1 <= _typed(v, "http", "port", int) <= 65535:
        raise ConfigError(f"{_env_name('http', 'port')}: must be 1..65535, got {v[('http', 'port')]!r}")
    if _typed(v, "ingest", "receive_maximum", int) > 65535:
        raise ConfigError("ORIGINCAST_INGEST_RECEIVE_MAXIMUM: MQTT allows at most 65535")
    protocol = str(v[("mqtt", "protocol")])
    if protocol not in ("5", "3.1.1"):
        raise ConfigError(f"{_env_name('mqtt', 'protocol')}: expected '5' or '3.1.1', got {protocol!r}")

    db_url = check_database_url(str(v[("database", "url")]))
    mqtt_url = str(v[("mqtt", "url")]) or None
    mqtt = parse_mqtt_url(mqtt_url) if mqtt_url else MqttSettings()
    mqtt = replace(mqtt, protocol=protocol)
    limits = replace(
        PayloadLimits(),
        max_payload_bytes=_typed(v, "ingest", "max_payload_bytes", int),
        max_future_s=_typed(v, "ingest", "max_future_s", float),
    )
    ingest = IngestSettings(
        mqtt=mqtt,
        client_id=str(v[("ingest", "client_id")]),
        shared_group=str(v[("ingest", "shared_group")]) or None,
        batch_max_rows=_typed(v, "ingest", "batch_max_rows", int),
        batch_max_delay_s=_typed(v, "ingest", "batch_max_delay_ms", int) / 1000.0,
        batch_max_bytes=_typed(v, "ingest", "batch_max_bytes", int),
        receive_maximum=_typed(v, "ingest", "receive_maximum", int),
        limits=limits,
    )
    try:
        webhooks = WebhookSettings(
            urls=_texts(v, "alerts", "webhooks"),
            secret=str(v[("alerts", "webhook_secret")]) or None,
        )
    except ValueError as exc:
        raise ConfigError(f"ORIGINCAST_ALERTS_WEBHOOKS: {exc}") from None
    alerts = AlertServiceSettings(mqtt=mqtt, topic_prefix=ingest.topic_prefix, webhooks=webhooks)
    return Config(
        alerts=alerts,
        http=check_tls_files(
            HttpSettings(
                host=str(v[("http", "host")]),
                port=_typed(v, "http", "port", int),
                certfile=str(v[("http", "certfile")]) or None,
                keyfile=str(v[("http", "keyfile")]) or None,
                public_url=_public_url(str(v[("http", "public_url")])),
                **_public_rate(v),
            )
        ),
        files=_files_settings(v),
        storage=StorageSettings(
            url=db_url,
            retention_days=_typed(v, "database", "retention_days", int),
            chunk_interval_hours=_typed(v, "database", "chunk_interval_hours", int),
            evidence_batch_max_span_s=_typed(v, "evidence", "batch_max_span_s", float),
            evidence_batch_max_readings=_typed(v, "evidence", "batch_max_readings", int),
        ),
        ingest=ingest,
        mqtt_url=mqtt_url,
        admin_token=_admin_token(str(v[("admin", "token")])),
        auth=_auth_settings(v),
        stream=_stream_settings(v),
        demo_test_pattern=bool(v[("stream", "demo_test_pattern")]),
        secret_key=_secret_key(str(v[("http", "secret_key")])),
        evidence_key_file=str(v[("evidence", "key_file")]),
        evidence_checkpoint_interval_s=_positive_float(v, "evidence", "checkpoint_interval_s"),
        evidence_tsa=_tsa_settings(v),
    )


def _tsa_settings(v: _Values) -> TsaSettings:
    url = str(v[("evidence", "tsa_url")]).strip()
    if url:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"ORIGINCAST_EVIDENCE_TSA_URL: expected an http(s):// URL, got {url!r}")
    return TsaSettings(
        url=url or None,
        timeout_s=_positive_float(v, "evidence", "tsa_timeout_s"),
        retry_s=_positive_float(v, "evidence", "tsa_retry_s"),
    )


def _positive_float(v: _Values, section: str, key: str) -> float:
    value = _typed(v, section, key, float)
    if not value > 0:
        raise ConfigError(f"{_env_name(section, key)}: must be greater than 0, got {value!r}")
    return value


def _public_url(value: str) -> str | None:
    if not value:
        return None
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(
            f"ORIGINCAST_HTTP_PUBLIC_URL: expected http(s)://host[:port][/path], got {value!r}"
        )
    return value.rstrip("/")


def _files_settings(v: _Values) -> FilesSettings:
    max_bytes = _typed(v, "files", "max_bytes", int)
    if not 1024 <= max_bytes <= 1024**3:
        raise ConfigError(f"ORIGINCAST_FILES_MAX_BYTES: expected 1 KiB to 1 GiB, got {max_bytes}")
    directory = str(v[("files", "dir")]).strip()
    if not directory:
        raise ConfigError("ORIGINCAST_FILES_DIR: must name a directory")
    return FilesSettings(directory=directory, max_bytes=max_bytes)


def check_tls_files(http: HttpSettings) -> HttpSettings:
    """Both files or neither; each must be a readable file. (Whether they hold a matching
    certificate and key is for ssl to say when the server starts.)"""
    given = {"ORIGINCAST_HTTP_CERTFILE": http.certfile, "ORIGINCAST_HTTP_KEYFILE": http.keyfile}
    if bool(http.certfile) != bool(http.keyfile):
        missing = next(name for name, value in given.items() if not value)
        raise ConfigError(f"{missing}: HTTPS needs both a certificate and its key (--certfile and --keyfile)")
    for name, path in given.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}: {path!r} is not a readable file")
    return http


def _admin_token(token: str) -> str | None:
    if not token:
        return None
    # A short token is guessable despite the login delay; 16 characters is the floor.
    if len(token) < 16:
        raise ConfigError("ORIGINCAST_ADMIN_TOKEN: must be at least 16 characters (it guards every write)")
    return token


def _secret_key(key: str) -> str | None:
    if not key:
        return None
    # Share links are as strong as this key: 32 characters of a random token at least.
    if len(key) < 32:
        raise ConfigError("ORIGINCAST_SECRET_KEY: must be at least 32 characters (it signs share links)")
    return key


def _auth_settings(v: _Values) -> AuthSettings:
    def get(key: str) -> float:
        return _typed(v, "auth", key, float)

    for key in ("session_idle_hours", "session_absolute_hours", "failure_max_delay_s"):
        if get(key) <= 0:
            raise ConfigError(f"{_env_name('auth', key)}: must be greater than 0, got {get(key)!r}")
    if not 0 <= get("failure_base_delay_s") <= get("failure_max_delay_s"):
        raise ConfigError(
            f"{_env_name('auth', 'failure_base_delay_s')}: must be 0..failure_max_delay_s,"
            f" got {get('failure_base_delay_s')!r}"
        )
    t, m, p = (
        _typed(v, "auth", k, int) for k in ("argon2_time_cost", "argon2_memory_kib", "argon2_parallelism")
    )
    if t < 1 or p < 1 or m < 8 * p:
        raise ConfigError(
            "ORIGINCAST_AUTH_ARGON2_*: time cost and parallelism at least 1, memory at least 8 KiB per lane,"
            f" got t={t}, m={m}, p={p}"
        )
    return AuthSettings(
        argon2_time_cost=t,
        argon2_memory_kib=m,
        argon2_parallelism=p,
        cookie_secure=bool(v[("auth", "cookie_secure")]),
        session_idle_s=get("session_idle_hours") * 3600.0,
        session_absolute_s=get("session_absolute_hours") * 3600.0,
        failure_base_delay_s=get("failure_base_delay_s"),
        failure_max_delay_s=get("failure_max_delay_s"),
        lockout_after=_lockout_after(v),
    )


def _public_rate(v: _Values) -> dict[str, float]:
    burst = _typed(v, "http", "public_burst", float)
    rate = _typed(v, "http", "public_rate_per_s", float)
    if not burst >= 1:
        raise ConfigError(f"{_env_name('http', 'public_burst')}: must be at least 1, got {burst}")
    if not rate >= 0:
        raise ConfigError(f"{_env_name('http', 'public_rate_per_s')}: must be 0 (off) or more, got {rate}")
    return {"public_burst": burst, "public_rate_per_s": rate}


def _lockout_after(v: _Values) -> int:
    n = _typed(v, "auth", "lockout_after", int)
    if n < 1:
        raise ConfigError(f"{_env_name('auth', 'lockout_after')}: must be at least 1, got {n}")
    return n


def _stream_settings(v: _Values) -> StreamSettings:
    def get(key: str) -> object:
        return v[("stream", key)]

    def get_int(key: str) -> int:
        return _typed(v, "stream", key, int)

    for key in ("video_bitrate_bps", "keyframe_interval_s", "viewer_queue_packets", "test_pattern_fps"):
        if _number(v, "stream", key) <= 0:
            raise ConfigError(f"{_env_name('stream', key)}: must be greater than 0, got {get(key)!r}")
    width, height = get_int("test_pattern_width"), get_int("test_pattern_height")
    if width < 160 or height < 90 or width % 2 or height % 2:
        raise ConfigError(
            "ORIGINCAST_STREAM_TEST_PATTERN_WIDTH/HEIGHT: even sizes of at least 160x90,"
            f" got {width}x{height}"
        )
    hosts = _texts(v, "stream", "ice_host_addresses")
    public = str(get("ice_public_address")) or None
    for name, addr in [("ice_host_addresses", a) for a in hosts] + [("ice_public_address", public)]:
        if addr is None:
            continue
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"{_env_name('stream', name)}: {addr!r} is not an IP address") from None
    urls = _texts(v, "stream", "ice_servers")
    for url in urls:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise ConfigError(
                f"{_env_name('stream', 'ice_servers')}: expected stun:… or turn:… URLs, got {url!r}"
            )
    username, credential = str(get("turn_username")) or None, str(get("turn_credential")) or None
    servers = tuple(
        IceServer(urls=(u,), username=username, credential=credential)
        if u.startswith(("turn:", "turns:"))
        else IceServer(urls=(u,))
        for u in urls
    )
    return StreamSettings(
        ice_host_addresses=hosts,
        ice_public_address=public,
        ice_servers=servers,
        video_bitrate_bps=get_int("video_bitrate_bps"),
        keyframe_interval_s=_typed(v, "stream", "keyframe_interval_s", float),
        viewer_queue_packets=get_int("viewer_queue_packets"),
        test_pattern_width=width,
        test_pattern_height=height,
        test_pattern_fps=get_int("test_pattern_fps"),
        fast_sender=bool(get("fast_sender")),
    )
