"""Private server processes for tests, benchmarks and `make demo`.

Each server runs from a folder of its own on a free port, so nothing touches (or depends on) the
machine's own MariaDB, PostgreSQL or Redis, and parallel test runs do not meet.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MARIADB_CDC_ARGS = (
    "--log-bin=binlog", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not open port {port} within {timeout}s; see {log}")


@dataclass
class Server:
    name: str
    port: int
    directory: Path
    proc: subprocess.Popen | None = None
    pid_file: Path | None = None
    extra: dict = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM  # PostgreSQL waits for its clients on SIGTERM; SIGINT does not

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        if self.pid_file and self.pid_file.exists():
            return int(self.pid_file.read_text().split()[0])
        return None

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, self.stop_signal)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if found:
            return found
    raise RuntimeError(f"none of {', '.join(names)} is installed (make installs them)")


def start_mariadb(directory: Path, *, port: int | None = None, cdc: bool = True, args: tuple[str, ...] = ()) -> Server:
    """A MariaDB server with the binary log set up for change capture (unless `cdc=False`)."""
    directory = Path(directory).resolve()
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if not (data / "mysql").exists():
        install = [
            _binary("mariadb-install-db", "mysql_install_db"), "--no-defaults",
            "--auth-root-authentication-method=normal", f"--datadir={data}", "--skip-test-db",
        ]
        if as_root:
            install.append("--user=root")
        done = subprocess.run(install, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            output = f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
            raise RuntimeError(f"mariadb-install-db failed ({done.returncode}):\n{output}")
    port = port or free_port()
    log = directory / "server.log"
    cmd = [
        _binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={data}", f"--port={port}",
        "--bind-address=127.0.0.1", f"--socket={directory / 'mysqld.sock'}",
        f"--pid-file={directory / 'mysqld.pid'}", "--server-id=1", "--skip-name-resolve",
        "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M", "--max-connections=200",
        "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
        f"--log-error={log}",
    ]
    if as_root:
        cmd.append("--user=root")
    if cdc:
        cmd.extend(a if not a.startswith("--log-bin") else f"--log-bin={data / 'binlog'}" for a in MARIADB_CDC_ARGS)
    cmd.extend(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(directory / "stderr.log", "ab"),
                            start_new_session=True)
    _wait_port(port, proc, log)
    return Server("mariadb", port, directory, proc=proc)


def start_redis(directory: Path, *, port: int | None = None) -> Server:
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = directory / "redis.log"
    proc = subprocess.Popen(
        [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _wait_port(port, proc, log)
    return Server("redis", port, directory, proc=proc)


def start_milvus(directory: Path, *, port: int | None = None) -> Server:
    """Milvus Lite as a gRPC server process, shared by the web process and every worker."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = directory / "milvus.log"
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(directory / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    _wait_port(port, proc, log)
    return Server("milvus", port, directory, proc=proc)


POSTGRES_USER = "postgres"
POSTGRES_PASSWORD = "rsync-dev"  # password auth over TCP, so a wrong password is refused like anywhere
POSTGRES_CDC_ARGS = (
    "wal_level=logical", "max_replication_slots=10", "max_wal_senders=10",
)


def _postgres_binary(name: str) -> str:
    """PostgreSQL's server programs live outside PATH on Debian (/usr/lib/postgresql/<major>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return str(candidates[-1])
    raise RuntimeError(f"{name} (PostgreSQL server) is not installed")


def _as_postgres_user(*paths: Path) -> dict:
    """initdb and postgres refuse to run as root: as root, give `paths` to the `postgres` user and
    return the Popen arguments that run a program as that user.

    Popen(user=...) switches user in the child itself, so `proc.pid` is the postmaster (a
    `runuser` wrapper in between would have to forward signals). The folder must also be reachable
    by that user, so callers running as root put it under /tmp, not under a private pytest folder.
    """
    if os.geteuid() != 0:
        return {}
    import pwd

    account = pwd.getpwnam(POSTGRES_USER)
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def start_postgres(directory: Path, *, port: int | None = None, cdc: bool = True, args: tuple[str, ...] = ()) -> Server:
    """A PostgreSQL cluster set up for logical replication (unless `cdc=False`).

    `args` are extra server settings as "name=value". The superuser is `postgres`, with password
    `POSTGRES_PASSWORD` over TCP (trust on the Unix socket, which lives in `directory`).
    """
    directory = Path(directory).resolve()
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    run_as = _as_postgres_user(directory)
    if not (data / "PG_VERSION").exists():
        pwfile = directory / "pwfile"
        pwfile.write_text(POSTGRES_PASSWORD + "\n")
        _as_postgres_user(pwfile)
        subprocess.run(
            [_postgres_binary("initdb"), "-D", str(data), "-U", POSTGRES_USER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=open(directory / "initdb.log", "ab"), **run_as,
        )
        pwfile.unlink()
    port = port or free_port()
    log = directory / "server.log"
    settings = [
        f"port={port}", "listen_addresses=127.0.0.1", f"unix_socket_directories={directory}",
        # A throwaway cluster: durability is not the point, speed is.
        "fsync=off", "synchronous_commit=off", "full_page_writes=off",
    ]
    if cdc:
        settings.extend(POSTGRES_CDC_ARGS)
    settings.extend(args)
    cmd = [_postgres_binary("postgres"), "-D", str(data)]
    for setting in settings:
        cmd.extend(["-c", setting])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), start_new_session=True, **run_as)
    _wait_port(port, proc, log)
    _wait_postgres_ready(port, proc, log)
    return Server(
        "postgres", port, directory, proc=proc, stop_signal=signal.SIGINT,
        extra={"user": POSTGRES_USER, "password": POSTGRES_PASSWORD},
    )


def _wait_postgres_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """The port opens before the cluster accepts connections ("the database system is starting up")."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user=POSTGRES_USER, password=POSTGRES_PASSWORD,
                             dbname="postgres", connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {log}:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.1)


def postgres_admin(server: Server, database: str = "postgres"):
    """A superuser connection (autocommit) to a private PostgreSQL, for fixtures and the demo."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user=POSTGRES_USER, password=POSTGRES_PASSWORD,
                            dbname=database)
    conn.autocommit = True
    return conn


def mariadb_root(server: Server, database: str | None = None):
    """A root connection to a private MariaDB (for fixtures and the demo loader)."""
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=server.port, user="root", password="",
                           database=database, autocommit=True, charset="utf8mb4")
