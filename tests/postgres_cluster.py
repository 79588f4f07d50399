"""A throw-away PostgreSQL server for the tests: Debian's binaries, our own cluster, loopback only.

`PostgresCluster.start()` runs `initdb` into a new temporary directory, starts `postgres` on
127.0.0.1 with a free ephemeral port (and its Unix socket in that directory), and waits until it
answers, for a bounded time. It runs as the `postgres` OS user when the tests run as root
(initdb refuses root): the directory is chown'ed to it and the processes are started with
Popen(user=, group=), the same as `runuser -u postgres --` without the wrapper process, so the
server is this process's own child.

Connections over TCP authenticate with a random password (SCRAM), so that the tests can check
that no message of steplog's repeats it; it lives only in this process (URLs, PGPASSWORD for a
`psql` child) and is never printed: `PostgresCluster.__repr__` and `safe()` leave it out. The
Unix socket trusts its OS user, for the administrator's own connection.

`stop()` sends the postmaster SIGINT, which is what `pg_ctl stop -m fast` does (roll back open
transactions, disconnect, shut down cleanly), and waits for it; it starts no process, so a
session fixture can stop the server in whichever test's teardown comes last, even one in the
fast lane (tests/conftest.py refuses subprocesses there). `stop(mode, remove=False)` stops it
the way `pg_ctl stop -m MODE` would (smart: SIGTERM, fast: SIGINT, immediate: SIGQUIT, which
ends every backend at once and leaves crash recovery to the next start) and keeps the data
directory, for `restart()` to start the same cluster again on the same port.

Durability is traded for speed (fsync, synchronous_commit and full_page_writes off): the
cluster holds test data only and is deleted with its directory.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import psycopg

POSTGRES_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PORT_TRIES = 5
RESTART_TRIES = 20  # restart(): the port may take a moment to be free again
RESTART_PAUSE_S = 0.25
# pg_ctl stop -m MODE, as the signal it sends the postmaster
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
SUPERUSER = "postgres"

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",  # loopback only, never any other address
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # the tests provoke errors on purpose
    "timezone": "UTC",
}


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine, or no `postgres` user to run them as root."""


def find_bin_dir(root: Path = POSTGRES_ROOT) -> Path:
    """/usr/lib/postgresql/<highest version>/bin, holding initdb and postgres."""
    found = []
    for candidate in root.glob("*/bin"):
        version = candidate.parent.name
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            found.append((tuple(int(p) for p in re.findall(r"\d+", version)), candidate))
    if not found:
        raise ClusterUnavailable(
            f"no PostgreSQL binaries under {root}/*/bin (apt-get install postgresql)"
        )
    return max(found)[1]


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class _RunAs:
    """Whom the server's processes run as: ourselves, or `postgres` when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_server(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(SUPERUSER)
        except KeyError as exc:
            raise ClusterUnavailable(
                "running as root, and there is no `postgres` user to run the server as"
            ) from exc
        return cls(entry.pw_uid, entry.pw_gid)

    def popen_options(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)


ROOT_PREFIX = "steplog-pg-"
OWNER_FILE = "owner.pid"  # the test process a cluster belongs to


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_abandoned(tmp: Path | None = None) -> list[Path]:
    """Stop and delete the clusters of test runs that died without stopping them (kill -9 of
    pytest leaves the postmaster running, in its own session, and its directory): those whose
    owner process is gone. Bounded: each server gets STOP_TIMEOUT_S per signal."""
    reaped = []
    for root in Path(tmp or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours to judge: left alone
        if _alive(owner):
            continue
        try:
            server = int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            server = 0
        for sig in (signal.SIGQUIT, signal.SIGKILL):  # immediate: its data is thrown away
            if not server or not _alive(server):
                break
            os.kill(server, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _alive(server) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int = 0
    _password: str = field(default="", repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _admin: psycopg.Connection[Any] | None = field(default=None, repr=False)
    _settings: dict[str, str] = field(default_factory=dict, repr=False)
    _run_as: _RunAs = field(default_factory=_RunAs, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    # -- starting and stopping ----------------------------------------------------------------

    @classmethod
    def start(cls, *, settings: Mapping[str, str] | None = None) -> PostgresCluster:
        bin_dir = find_bin_dir()
        run_as = _RunAs.for_server()
        reap_abandoned()
        root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))  # short: a socket path is <108 bytes
        (root / OWNER_FILE).write_text(str(os.getpid()))
        cluster = cls(
            bin_dir=bin_dir,
            root=root,
            _password=secrets.token_urlsafe(24),
            _settings={**SERVER_SETTINGS, **(settings or {})},
            _run_as=run_as,
        )
        try:
            run_as.own(root)
            cluster._initdb(run_as)
            cluster._serve()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _initdb(self, run_as: _RunAs) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._password + "\n")
        pwfile.chmod(0o600)
        run_as.own(pwfile)
        try:
            done = subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir)]
                + ["-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]
                + ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                env=self._env(),
                **run_as.popen_options(),
            )
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")

    def _serve(self) -> None:
        """Start postgres on a free port; a port taken in the meantime is tried again."""
        for _ in range(PORT_TRIES):
            self.port = free_port()
            if self._launch():
                return
            if "Address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"postgres did not start:\n{self.log_tail()}")

    def _launch(self) -> bool:
        """Start postgres on self.port; True once it answers, False if it exited."""
        options = {**self._settings, "port": str(self.port)}
        options["unix_socket_directories"] = str(self.socket_dir)
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # a Ctrl-C of the test run reaches us, not it
                **self._run_as.popen_options(),
            )
        if self._wait_ready():
            return True
        self._proc.wait(timeout=STOP_TIMEOUT_S)
        return False

    def restart(self) -> None:
        """Start the cluster again after stop(mode, remove=False): same data, same port (a
        port still held for a moment is tried again, a bounded number of times)."""
        assert not self.running, "the server is running"
        assert self.data_dir.is_dir(), "the cluster's directory was removed"
        for _ in range(RESTART_TRIES):
            logged = self._log_size()
            if self._launch():
                return
            if "Address already in use" not in self._log_since(logged):
                break
            time.sleep(RESTART_PAUSE_S)
        raise RuntimeError(f"postgres did not start again:\n{self.log_tail()}")

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self) -> bool:
        """True once the server accepts connections; False if it exited. Bounded in time."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        pause = 0.02
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                self._admin = psycopg.connect(
                    host=str(self.socket_dir),
                    port=self.port,
                    user=SUPERUSER,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                )
                return True
            except psycopg.OperationalError:
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
        raise RuntimeError(f"postgres not ready after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def stop(self, mode: str = "fast", *, remove: bool = True) -> None:
        """`pg_ctl stop -m MODE` without a process: its signal to the postmaster, then wait
        (bounded; SIGQUIT, then SIGKILL, if it will not go). remove: delete the directory too
        (else restart() can start the cluster again). Idempotent."""
        first = STOP_SIGNALS[mode]
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            signals = [first] + [s for s in (signal.SIGQUIT, signal.SIGKILL) if s != first]
            for sig in signals:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    # -- databases ----------------------------------------------------------------------------

    def url(self, dbname: str, *, password: bool = True, user: str = SUPERUSER) -> str:
        """postgresql://user:PASSWORD@127.0.0.1:PORT/dbname (the password only in memory)."""
        secret = f":{self._password}" if password and user == SUPERUSER else ""
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{dbname}"

    def safe(self, text: str) -> str:
        """`text` with the password blanked out: for anything a failing test may print."""
        return text.replace(self._password, "***") if self._password else text

    def contains_password(self, text: str) -> bool:
        return bool(self._password) and self._password in text

    def admin(self, sql: str, params: tuple | None = None) -> list[tuple]:
        """Run one statement as the superuser on the `postgres` database (autocommit)."""
        assert self._admin is not None, "the cluster is not running"
        cur = self._admin.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def admin_in(self, dbname: str, sql: str) -> list[tuple]:
        """Run SQL (one or more statements, no parameters) as the superuser in `dbname`, over
        the Unix socket; the rows of the last statement. For a test to edit behind steplog's
        back (disable a trigger, change a row) and to read what it left."""
        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
        ) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]  # the test's own text
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def create_database(self, prefix: str = "t", *, encoding: str = "UTF8") -> str:
        """A new database from template0 (FILE_COPY where the server has it: a fraction of
        WAL_LOG's time for a small database, which matters at one per test)."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        assert self._admin is not None, "the cluster is not running"
        fast = " STRATEGY FILE_COPY" if self._admin.info.server_version >= 150000 else ""
        self.admin(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING '{encoding}'"
            f" LC_COLLATE 'C' LC_CTYPE 'C'{fast}"
        )
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, dbname: str, sql: str, *, timeout: float = 60) -> subprocess.CompletedProcess:
        """`psql -c SQL` over TCP as the superuser, the password in PGPASSWORD (not in argv)."""
        return subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]
            + [self.url(dbname, password=False)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self._env(), "PGPASSWORD": self._password, "PGCONNECT_TIMEOUT": "10"},
            stdin=subprocess.DEVNULL,
        )
