#!/usr/bin/env python3
"""The project's own service instances for tests and development.

Every class starts a private server on a free loopback port with its data in a work
directory, returns from ``start()`` only once the server really answers, and never
outlives the Python process that started it (``stop()`` waits for exit; an atexit
hook stops whatever is still running). Nothing here touches the machine's system
services on the standard ports.

    python scripts/services.py up mosquitto postgres timescale   # until Ctrl-C
    python scripts/services.py prepare                           # build the Timescale root

The CLI and the classes are used as they are by tests/conftest.py and scripts/test.sh.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_TEMPLATE = REPO / "scripts" / "mosquitto" / "mosquitto.conf.in"
MOSQUITTO_ACL = REPO / "scripts" / "mosquitto" / "acl"
MOSQUITTO_COMPOSE_CONF = REPO / "scripts" / "mosquitto" / "mosquitto.compose.conf"
HOST = "127.0.0.1"
PG15_BIN = Path("/usr/lib/postgresql/15/bin")
TIMESCALE_SUITE = "trixie"
TIMESCALE_PACKAGES = ("postgresql-17", "postgresql-17-timescaledb")
DEFAULT_TIMESCALE_CACHE = Path(
    os.environ.get("ORIGINCAST_TIMESCALE_CACHE") or Path.home() / ".cache" / "origincast" / "trixie-timescale"
)
START_TIMEOUT_S = 60.0


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log at {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    log: Path,
    alive: Callable[[], bool] = lambda: True,
    timeout: float = START_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise ServiceError(f"{what} exited during start-up. Log tail:\n{log_tail(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not ready after {timeout:.0f}s. Log tail:\n{log_tail(log)}")
        time.sleep(0.05)


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


# An MQTT 3.1.1 CONNECT with an empty client id and clean session. Any CONNACK,
# even "not authorised", proves the broker (not just a socket) is serving the port.
_MQTT_PROBE = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"


def _mqtt_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(_MQTT_PROBE)
            reply = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs no error
            return reply[:1] == b"\x20"
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid``. PostgreSQL backends call setsid(), so a process
    group kill would miss them; the parent links in /proc do not."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _sigkill_tree(pid: int, timeout: float = 30.0) -> None:
    pids = [pid, *_descendants(pid)]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise ServiceError(f"processes {pids} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.02)


def process_token(pid: int) -> str | None:
    """ "<pid> <start time>": names one process for good, unlike a pid, which the
    kernel reuses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        return None
    return f"{pid} {fields[19]}"


def _token_alive(path: Path) -> bool:
    try:
        token = path.read_text().strip()
        return process_token(int(token.split()[0])) == token
    except (OSError, ValueError, IndexError):
        return False


OWNER_FILE = "owner"


def _reap_orphans(pattern: Path, stop: Callable[[Path], None]) -> None:
    """Remove the temporary instances whose owning Python process died without
    cleaning up (SIGKILL, a CI timeout), stopping their servers first.

    Only directories with an owner file are touched: those are temporary by
    construction. A work directory the caller chose never gets one."""
    for owner in pattern.parent.glob(f"{pattern.name}/{OWNER_FILE}"):
        if _token_alive(owner):
            continue
        instance = owner.parent
        with contextlib.suppress(Exception):
            stop(instance)
            shutil.rmtree(instance, ignore_errors=True)


def _write_owner(directory: Path) -> None:
    token = process_token(os.getpid())
    assert token is not None
    (directory / OWNER_FILE).write_text(token + "\n")


# --- lifecycle shared by all services -------------------------------------------------

_running: set[Service] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    # The safety net: a test run that forgot (or failed) to stop a service must not
    # leave a broker or a postmaster behind.
    with _running_lock:
        leftovers = list(_running)
    for service in leftovers:
        with contextlib.suppress(Exception):
            service.close()


class Service:
    """Common life cycle: a work directory, a port kept across restarts, registration
    with the atexit safety net, and context-manager use (start ... close)."""

    name = "service"

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self._owns_workdir = workdir is None
        if workdir is None:
            self._reap_orphans()
            workdir = tempfile.mkdtemp(prefix=f"{self.temp_prefix()}")
            _write_owner(Path(workdir))
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._port: int | None = None

    @classmethod
    def temp_prefix(cls) -> str:
        return f"origincast-{cls.name}-"

    @classmethod
    def _reap_orphans(cls) -> None:
        """Clean up what earlier, killed test runs left of this kind of service."""
        _reap_orphans(Path(tempfile.gettempdir()) / f"{cls.temp_prefix()}*", cls._stop_orphan)

    @staticmethod
    def _stop_orphan(workdir: Path) -> None:
        """Stop the server an abandoned temporary work directory belongs to."""

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError(f"{self.name} has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and delete the work directory if this object made it."""
        try:
            if self.running:
                self.stop()
        finally:
            self._forget()
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _remember(self) -> None:
        with _running_lock:
            _running.add(self)

    def _forget(self) -> None:
        with _running_lock:
            _running.discard(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        return f"<{type(self).__name__} port={port} workdir={self.workdir}>"


# --- mosquitto ------------------------------------------------------------------------


def render_mosquitto_conf(
    *,
    port: int,
    bind_address: str,
    data_dir: str,
    persistence: bool,
    auth: str,
    user: str,
    log_dest: str,
) -> str:
    template = string.Template(MOSQUITTO_TEMPLATE.read_text())
    return template.substitute(
        port=port,
        bind_address=bind_address,
        data_dir=data_dir.rstrip("/"),
        persistence="true" if persistence else "false",
        auth=auth,
        user=user,
        log_dest=log_dest,
    )


def _auth_block(password_file: str | None, acl_file: str | None) -> str:
    if password_file is None:
        return "# No users configured: anyone on the listener may connect.\nallow_anonymous true"
    return f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}"


def render_compose_mosquitto_conf() -> str:
    """The production rendering: what docker-compose mounts into eclipse-mosquitto."""
    return render_mosquitto_conf(
        port=1883,
        bind_address="0.0.0.0",
        data_dir="/mosquitto/data",
        persistence=True,
        # A volume of its own: the server account is added at container start and
        # device provisioning adds hashes (mosquitto_passwd) while the config stays
        # read-only.
        auth=_auth_block("/mosquitto/auth/passwd", "/mosquitto/config/acl"),
        user="mosquitto",
        log_dest="stdout",
    )


class Mosquitto(Service):
    """A private mosquitto broker, run in the foreground as our child."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        persistence: bool = True,
        users: dict[str, str] | None = None,
        binary: str = "/usr/sbin/mosquitto",
    ) -> None:
        super().__init__(workdir)
        self.persistence = persistence
        self.users = dict(users) if users else None
        self.binary = binary
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.password_file = self.workdir / "passwd"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @staticmethod
    def _stop_orphan(workdir: Path) -> None:
        pidfile = workdir / "mosquitto.pid"
        if _token_alive(pidfile):
            _sigkill_tree(int(pidfile.read_text().split()[0]))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def _write_password_file(self) -> None:
        assert self.users
        self.password_file.unlink(missing_ok=True)
        self.password_file.touch(mode=0o600)
        for user, password in self.users.items():
            # -b puts the password on a command line: acceptable for test credentials;
            # the file gets salted hashes, never the plain text.
            subprocess.run(
                ["mosquitto_passwd", "-b", str(self.password_file), user, password],
                check=True,
                capture_output=True,
            )

    def _write_conf(self) -> None:
        if self.users:
            self._write_password_file()
            auth = _auth_block(str(self.password_file), str(MOSQUITTO_ACL))
        else:
            auth = _auth_block(None, None)
        # As root mosquitto would switch to the "mosquitto" account, which cannot
        # write our work directory; staying root keeps persistence working.
        user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.conf_path.write_text(
            render_mosquitto_conf(
                port=self.port,
                bind_address=HOST,
                data_dir=str(self.workdir),
                persistence=self.persistence,
                auth=auth,
                user=user,
                log_dest="stderr",
            )
        )

    def start(self) -> None:
        if self.running:
            return
        if self._port is None:
            self._port = free_port()
        self._write_conf()
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C meant for us must not kill the broker before we
            # stop it gracefully (which is what saves the persistence file).
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self._owns_workdir:
            token = process_token(self._proc.pid)
            (self.workdir / "mosquitto.pid").write_text(f"{token}\n")
        self._remember()
        try:
            _wait_until(
                lambda: _mqtt_answers(self.port),
                what=f"mosquitto on port {self.port}",
                log=self.log_path,
                alive=lambda: self.running,
                timeout=15,
            )
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Graceful: SIGTERM makes mosquitto write its persistence file before exit."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ServiceError(
                    f"mosquitto ignored SIGTERM for 30s; killed. Log tail:\n{log_tail(self.log_path)}"
                ) from None
        self._forget()

    def kill(self) -> None:
        """SIGKILL: a crash; only what the last autosave wrote survives."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget()


# --- PostgreSQL -----------------------------------------------------------------------


def _kill_postmaster(data_host: Path, data_inner: str) -> None:
    """SIGKILL the cluster whose lock file is in data_host, if its postmaster still
    runs; the command line must name the data directory, so a reused pid is safe."""
    try:
        pid = int((data_host / "postmaster.pid").read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if data_inner.encode() in argv:
        _sigkill_tree(pid)


def _pg_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _PgServer(Service):
    """A PostgreSQL cluster driven through pg_ctl as the ``postgres`` OS account.

    Subclasses say where the binaries are and how a command reaches them (directly,
    or inside a chroot); the instance directory has a path as the host sees it and a
    path as the server sees it.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None) -> None:
        super().__init__(workdir)
        self.log_path = self.workdir / "postgres.log"

    # Implemented by subclasses -------------------------------------------------------
    def _wrap(self, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def _bin(self, tool: str) -> str:
        raise NotImplementedError

    def _instance_paths(self) -> tuple[Path, str]:
        """(the instance directory as the host sees it, as the server sees it)."""
        raise NotImplementedError

    def _owner(self) -> tuple[int, int]:
        raise NotImplementedError

    def _extra_settings(self) -> dict[str, str]:
        return {}

    # ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{dbname}"

    @property
    def _data_host(self) -> Path:
        return self._instance_paths()[0] / "data"

    @property
    def _data_inner(self) -> str:
        return self._instance_paths()[1] + "/data"

    @property
    def running(self) -> bool:
        pid = self.postmaster_pid
        return pid is not None and _pid_alive(pid)

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self._data_host / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HOME": self._instance_paths()[1],
        }

    def _run(self, *argv: str, timeout: float = 120, logged: bool = False) -> str:
        """Run a PostgreSQL tool as the server account.

        ``logged``: the tool may leave a postmaster running that inherits its stdout;
        that must be a file, never a pipe we wait on (we would wait for ever)."""
        cmd = self._wrap(argv)
        if logged:
            with open(self.log_path, "ab") as log:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    timeout=timeout,
                    check=False,
                )
            if proc.returncode != 0:
                raise ServiceError(
                    f"{' '.join(argv[:2])} failed ({proc.returncode}). "
                    f"Log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            return ""
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def _initdb(self) -> None:
        inst_host, _ = self._instance_paths()
        uid, gid = self._owner()
        inst_host.mkdir(parents=True, exist_ok=True)
        os.chown(inst_host, uid, gid)
        if self._owns_workdir:
            _write_owner(inst_host)
        self._run(
            self._bin("initdb"),
            "-D",
            self._data_inner,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            # Only the bootstrap files skip fsync; the running server syncs normally.
            "--no-sync",
            timeout=300,
        )
        # The server only ever listens on 127.0.0.1 and the private socket directory.
        (self._data_host / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with open(self._data_host / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'origincast.conf'\n")

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self._instance_paths()[1],
            # Crash-safety tests kill the server; it must really write to disk.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "200",
            "huge_pages": "off",
            "logging_collector": "off",
            **self._extra_settings(),
        }
        lines = [f"{k} = '{v}'" for k, v in settings.items()]
        path = self._data_host / "origincast.conf"
        path.write_text("# Written by scripts/services.py at every start.\n" + "\n".join(lines) + "\n")
        os.chmod(path, 0o644)

    def start(self) -> None:
        if self.running:
            return
        if not (self._data_host / "PG_VERSION").exists():
            self._initdb()
        if self._port is None:
            self._port = free_port()
        self._write_settings()
        self._remember()
        try:
            self._pg_ctl("start")
            self._wait_ready()
        except BaseException:
            with contextlib.suppress(Exception):
                self.kill()
            raise

    def _pg_ctl(self, action: str, mode: str | None = None) -> None:
        argv = [self._bin("pg_ctl"), action, "-D", self._data_inner, "-w", "-t", "120", "-s"]
        if mode:
            argv += ["-m", mode]
        self._run(*argv, timeout=180, logged=True)

    def _wait_ready(self) -> None:
        # pg_ctl -w waited on the unix socket; the tests use TCP, so prove that too.
        import psycopg  # the project's own driver; imported late so the CLI stays light

        def connects() -> bool:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("select 1")
                return True
            except psycopg.OperationalError:
                return False

        _wait_until(
            connects,
            what=f"{self.name} on port {self.port}",
            log=self.log_path,
            alive=lambda: self.running,
        )

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions, checkpoints); waits for exit."""
        if self.running:
            self._pg_ctl("stop", "fast")
        self._forget()

    def restart(self) -> None:
        if not self.running:
            self.start()
            return
        self._write_settings()
        self._pg_ctl("restart", "fast")
        self._wait_ready()

    def crash_restart(self) -> None:
        """Stop without a checkpoint (as a power cut would) and start: crash recovery."""
        if self.running:
            self._pg_ctl("stop", "immediate")
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend; the next start() recovers."""
        pid = self.postmaster_pid
        if pid is not None and _pid_alive(pid):
            _sigkill_tree(pid)
            # pg_ctl detached the postmaster, so it is not our child to reap, and this
            # machine's init reaps orphans only every second or two. Until then the
            # zombie passes PostgreSQL's kill(pid, 0) test of the stale lock files and
            # the next start refuses. Every process of the cluster is dead now, so the
            # lock files protect nothing: remove them.
            (self._data_host / "postmaster.pid").unlink(missing_ok=True)
            sockets = self._instance_paths()[0]
            for name in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
                (sockets / name).unlink(missing_ok=True)
        self._forget()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {_pg_identifier(name)}")  # type: ignore[arg-type]
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_pg_identifier(name)} WITH (FORCE)")  # type: ignore[arg-type]


def _as_postgres_account(argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    # PostgreSQL refuses to run as root. setpriv (not runuser/su) opens no PAM session
    # and execs in place, so nothing sits between us and pg_ctl.
    return [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
        *argv,
    ]


class Postgres(_PgServer):
    """Debian's PostgreSQL 15 with a private data directory."""

    name = "postgres"

    def __init__(self, workdir: str | os.PathLike[str] | None = None, bin_dir: Path = PG15_BIN) -> None:
        super().__init__(workdir)
        self.bin_dir = bin_dir
        self._inst = self.workdir / "pg"
        if self._owns_workdir:
            # mkdtemp makes 0700 directories; the postgres account must be able to
            # pass through ours to reach its own.
            os.chmod(self.workdir, 0o755)
        self._check_reachable()

    def _check_reachable(self) -> None:
        if os.geteuid() != 0:
            return
        pg = pwd.getpwnam("postgres")
        for d in [self.workdir, *self.workdir.parents]:
            st = d.stat()
            # x for "other" (or postgres owns/groups it) is enough to traverse.
            if not (
                st.st_mode & 0o001
                or st.st_uid == pg.pw_uid
                or (st.st_gid == pg.pw_gid and st.st_mode & 0o010)
            ):
                raise ServiceError(
                    f"the postgres account cannot enter {d} (mode {oct(st.st_mode & 0o777)}); "
                    f"give Postgres a workdir it can reach, e.g. under /tmp"
                )

    @staticmethod
    def _stop_orphan(workdir: Path) -> None:
        data = workdir / "pg" / "data"
        _kill_postmaster(data, str(data))

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        return _as_postgres_account(argv)

    def _bin(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def _instance_paths(self) -> tuple[Path, str]:
        return self._inst, str(self._inst)

    def _owner(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        pg = pwd.getpwnam("postgres")
        return pg.pw_uid, pg.pw_gid


# --- TimescaleDB in a Debian 13 root --------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (never hard-coded in the repo)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in deb822.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if fields.get("uris") and any("security" not in s for s in suites):
                return fields["uris"].split()[0]
    classic = Path("/etc/apt/sources.list")
    if classic.exists():
        for line in classic.read_text().splitlines():
            parts = [p for p in line.split() if not p.startswith("[")]
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[2]:
                return parts[1]
    raise ServiceError("no Debian mirror found in /etc/apt/sources.list(.d)")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(prefix):
            found.append(mount_point)
    return sorted(found, reverse=True)


def _remove_tree(path: Path) -> None:
    # rm -rf through a mounted /proc or /dev would be a disaster: unmount first.
    for mount_point in _mounts_under(path):
        subprocess.run(["umount", "-l", mount_point], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise ServiceError(
            f"{' '.join(cmd[:4])} … failed ({done.returncode}). Log tail ({log}):\n{log_tail(log)}"
        )


def timescale_root(cache_dir: Path = DEFAULT_TIMESCALE_CACHE, *, quiet: bool = True) -> Path:
    """A Debian 13 root with PostgreSQL 17 and TimescaleDB, built once per cache_dir.

    The marker file is the last thing written (inside the partial tree, which is then
    renamed into place), so a root without it is incomplete and is rebuilt. A file
    lock keeps two processes (e.g. parallel test runs) from building at once.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    root = cache_dir / "root"
    marker = root / ".origincast-complete"
    if marker.exists():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another process built it while we waited
            return root
        started = time.monotonic()
        log = cache_dir / "build.log"
        log.write_text("")
        if not quiet:
            print(
                f"building {TIMESCALE_SUITE} root with TimescaleDB in {cache_dir} (log: {log}) …",
                file=sys.stderr,
                flush=True,
            )
        partial = cache_dir / "root.partial"
        _remove_tree(partial)
        _remove_tree(root)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "HOME": "/root",
        }
        _logged(
            ["debootstrap", "--variant=minbase", TIMESCALE_SUITE, str(partial), debian_mirror()], log, env
        )
        # No daemons may start inside the build root, and postgresql-common must not
        # create (and try to run) a default cluster: we make our own per instance.
        policy = partial / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        (partial / "etc/postgresql-common").mkdir(parents=True, exist_ok=True)
        (partial / "etc/postgresql-common/createcluster.conf").write_text("create_main_cluster = false\n")
        chroot = ["chroot", str(partial)]
        _logged([*chroot, "apt-get", "update"], log, env)
        _logged(
            [
                *chroot,
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confold",
                *TIMESCALE_PACKAGES,
            ],
            log,
            env,
        )
        _logged([*chroot, "apt-get", "clean"], log, env)
        versions = subprocess.run(
            [*chroot, "dpkg-query", "-W", *TIMESCALE_PACKAGES],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        (partial / ".origincast-complete").write_text(
            f"built in {time.monotonic() - started:.0f}s\n{versions}"
        )
        partial.rename(root)
        if not quiet:
            print(f"built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return root


class Timescale(_PgServer):
    """PostgreSQL 17 + TimescaleDB (Apache edition) running inside a cached Debian 13
    root via chroot; the host reaches it over TCP on 127.0.0.1.

    The data directory must be inside the root (the server cannot see out of it):
    it lives in <root>/var/tmp/origincast-<id>; ``workdir/instance`` records
    where. close() removes it if the work directory was a temporary one.
    """

    name = "timescale"
    pg_major = 17

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] = DEFAULT_TIMESCALE_CACHE,
    ) -> None:
        super().__init__(workdir)
        self.cache_dir = Path(cache_dir).expanduser()
        self.root: Path | None = None
        pointer = self.workdir / "instance"
        # Reuse the instance a previous object in this workdir made (e.g. the CLI with
        # --workdir), otherwise pick a new one.
        self._inner = (
            pointer.read_text().strip()
            if pointer.exists()
            else f"/var/tmp/origincast-{uuid.uuid4().hex[:12]}"
        )

    def _ensure_root(self) -> Path:
        if self.root is None:
            self.root = timescale_root(self.cache_dir)
            (self.workdir / "instance").write_text(self._inner + "\n")
            link = self.workdir / "data"
            if not link.is_symlink():
                # For people looking for the files: the host's view of the data directory.
                link.symlink_to(self.root / self._inner.lstrip("/") / "data")
        return self.root

    def _instance_paths(self) -> tuple[Path, str]:
        root = self._ensure_root()
        return root / self._inner.lstrip("/"), self._inner

    def _owner(self) -> tuple[int, int]:
        root = self._ensure_root()
        for line in (root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "postgres":
                return int(fields[2]), int(fields[3])
        raise ServiceError(f"no postgres account in {root}/etc/passwd")

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        uid, gid = self._owner()
        return ["chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", str(self._ensure_root()), *argv]

    def _bin(self, tool: str) -> str:
        return f"/usr/lib/postgresql/{self.pg_major}/bin/{tool}"

    def _extra_settings(self) -> dict[str, str]:
        return {
            "shared_preload_libraries": "timescaledb",
            # No /dev/shm in the root: dynamic shared memory goes to files in the data dir.
            "dynamic_shared_memory_type": "mmap",
            # Loopback only: the extension must not try to phone home.
            "timescaledb.telemetry_level": "off",
        }

    @property
    def running(self) -> bool:
        # Asking must not trigger the (slow) build of the root.
        return self.root is not None and super().running

    def start(self) -> None:
        root = self._ensure_root()

        def stop(instance: Path) -> None:
            _kill_postmaster(instance / "data", f"/{instance.relative_to(root)}/data")

        # Instances live in the shared root, not in /tmp: nothing else would ever
        # delete what killed test runs left there.
        _reap_orphans(root / "var" / "tmp" / "origincast-*", stop)
        super().start()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.root is not None and self._owns_workdir:
                shutil.rmtree(self._instance_paths()[0], ignore_errors=True)


# --- CLI ------------------------------------------------------------------------------

SERVICES = ("mosquitto", "postgres", "timescale")


def _up(names: Sequence[str], workdir: Path | None, cache_dir: Path) -> int:
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def sub(name: str) -> Path | None:
        return workdir / name if workdir else None

    started: list[Service] = []
    lines: list[str] = []
    try:
        for name in dict.fromkeys(names):
            t0 = time.monotonic()
            service: Service
            if name == "mosquitto":
                service = Mosquitto(sub(name))
            elif name == "postgres":
                service = Postgres(sub(name))
            else:
                service = Timescale(sub(name), cache_dir)
            started.append(service)
            service.start()
            print(
                f"# {name} ready on {service.url} in {time.monotonic() - t0:.1f}s "
                f"(workdir {service.workdir})",
                flush=True,
            )
            if isinstance(service, Mosquitto):
                lines.append(f"ORIGINCAST_MQTT_URL={service.url}")
        # The application gets one database; prefer TimescaleDB when both run.
        dbs = [s for s in started if isinstance(s, _PgServer)]
        if dbs:
            db = next((s for s in dbs if isinstance(s, Timescale)), dbs[0])
            url = db.database_url("origincast")
            if workdir is None or not _database_exists(db, "origincast"):
                url = db.create_database("origincast")
            lines.append(f"ORIGINCAST_DATABASE_URL={url}")
            for other in dbs:
                if other is not db:
                    print(f"# also {other.name}: {other.url}", flush=True)
        for line in lines:
            print(line, flush=True)
        print("# running; Ctrl-C or SIGTERM stops everything", flush=True)
        while not stop_requested.wait(1.0):
            for service in started:
                if not service.running:
                    print(f"# {service.name} exited unexpectedly", file=sys.stderr)
                    return 1
        return 0
    finally:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                if workdir is None:
                    service.close()
                else:
                    service.stop()


def _database_exists(db: _PgServer, name: str) -> bool:
    import psycopg

    with psycopg.connect(db.url) as conn:
        row = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
    return row is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start services and run until Ctrl-C/SIGTERM")
    up.add_argument("services", nargs="+", choices=SERVICES)
    up.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data here across runs (default: a temporary directory)",
    )
    up.add_argument("--cache-dir", type=Path, default=DEFAULT_TIMESCALE_CACHE)
    prep = sub.add_parser("prepare", help="build the TimescaleDB root once (cached)")
    prep.add_argument("--cache-dir", type=Path, default=DEFAULT_TIMESCALE_CACHE)
    sub.add_parser(
        "render-compose-conf", help=f"rewrite {MOSQUITTO_COMPOSE_CONF.relative_to(REPO)} from the template"
    )
    args = parser.parse_args(argv)

    if args.command == "prepare":
        t0 = time.monotonic()
        root = timescale_root(args.cache_dir, quiet=False)
        print(f"timescale root ready: {root} ({time.monotonic() - t0:.1f}s)")
        return 0
    if args.command == "render-compose-conf":
        MOSQUITTO_COMPOSE_CONF.write_text(render_compose_mosquitto_conf())
        print(f"wrote {MOSQUITTO_COMPOSE_CONF}")
        return 0
    return _up(args.services, args.workdir, args.cache_dir)


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Start several services, and close all of them however the block ends."""
    with contextlib.ExitStack() as stack:
        for service in services:
            stack.enter_context(service)
        yield services


if __name__ == "__main__":
    sys.exit(main())
