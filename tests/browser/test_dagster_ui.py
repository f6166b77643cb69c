"""The Dagster UI in a real browser, after what a user does first: ``feynman run``, then ``make ui``.

``python -m orchestration.cli run --days 2 --end-date 2024-03-05 --no-warm-up`` runs the deployed ``main`` job for
the sessions 2024-03-04 and 2024-03-05 (three simulated symbols) and then dbt, into a fresh DAGSTER_HOME and data
folder (a child process, so the real ``orchestration.definitions:defs`` builds its resources for those folders).
Then ``dagster dev`` (the command of ``make ui``: the webserver and the daemon) serves that instance on a free
loopback port, and Debian's chromium, driven by selenium and Debian's chromedriver, does what a user does:

- the global asset lineage, the bars_1m page with its metadata, price chart and check results;
- the Checks tab shows each check's description (the oracle: the check specs of ``defs`` loaded here);
- the ``main`` job's Runs tab lists the runs of the two sessions, with their partition tags, as Success;
- the bars_1m Partitions tab: the partitions are exchange sessions (no weekend) and the two sessions are
  materialised;
- one launch from the ``main`` job's launchpad (partition 2024-03-01) is queued, started by the daemon and ends
  in Success.

The automation that would launch runs on its own (the after-close sensor, the freshness sensor and the nightly
schedules) is kept off the test's clock (``FEYNMAN_AUTOMATION=off``, crons of 1 January), so the runs on the pages
are only the test's. Screenshots land in ``test-artifacts/screenshots/``; the README's copies are in
``docs/screenshots/`` (``FEYNMAN_UPDATE_SCREENSHOTS=1`` copies the README's ones there after a passing run).
Chromium is installed by ``ensure_chromium.sh`` when missing; if it can't be, the test fails (it never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

DOCS_SHOTS = REPO / "docs" / "screenshots"
# the README's screenshots (copied to docs/screenshots/ with FEYNMAN_UPDATE_SCREENSHOTS=1)
README_SHOTS = ["asset_graph.png", "bars_1m.png", "bars_1m_price_chart.png", "bars_1m_checks.png",
                "main_runs.png", "bars_1m_partitions.png", "launchpad.png", "launched_run.png"]

SESSIONS = ["2024-03-04", "2024-03-05"]  # a Monday and a Tuesday NYSE session: what `feynman run --days 2` runs
PARTITION = SESSIONS[-1]  # the latest materialisation
LAUNCH_PARTITION = "2024-03-01"  # a Friday session, launched from the launchpad
RANGE = ("2024-02-28", "2024-03-06")  # the range typed on the Partitions tab: a weekend inside
WEEKEND = ["2024-03-02", "2024-03-03"]
SYMBOLS = "AAPL,MSFT,SPY"
BARS_1M = "duckdb/bars_1m"
BAR_CHECKS = ["great_expectations_suite", "duplicate_keys", "timestamps_increasing", "large_one_minute_moves",
              "gap_jumps", "isolated_outliers", "volume_spikes", "session_gaps", "stale_data"]
GRAPH_ASSETS = ["ticks", "bars_1m", "bars_5m", "features", "physics_states", "forecasts", "signals", "archives"]
GROUPS = ["ingest", "bars", "features", "physics", "forecasts", "embeddings", "signals", "rollups", "marts",
          "archive"]
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars"]
WAIT_S = 60
RUN_WAIT_S = 300  # a launched run: queued, picked up by the daemon, executed
NEVER_ON_THE_TEST_CLOCK = "0 0 1 1 *"  # the schedules' crons in the test: midnight of 1 January only


# ---- set-up: chromium, `feynman run`, `dagster dev` --------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium and chromedriver, installed with apt-get when missing (``make test`` runs as root)."""
    script = HERE / "ensure_chromium.sh"
    try:
        proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script.name} did not finish in {exc.timeout} s (apt-get install chromium chromium-driver)",
                    pytrace=False)
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if proc.returncode != 0 or missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver; {script.name} exited "
                    f"{proc.returncode}, still missing: {missing or 'nothing'}\n--- its output ---\n"
                    f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}", pytrace=False)
    return CHROMIUM


@dataclass
class DagsterUI:
    url: str
    log: Path  # dagster dev's output (webserver, daemon, code servers)
    bars_rows: dict[str, int]  # session -> its rows in the warehouse's bars_1m after `feynman run`


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL", "FEYNMAN_FILES_PATH",
                 "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "FEYNMAN_CALENDAR", "FEYNMAN_PARTITIONS_START"):
        env.pop(name, None)
    env.update(DAGSTER_HOME=str(root / "dagster_home"), FEYNMAN_DATA_DIR=str(root / "data"), FEYNMAN_SOURCE="sim",
               FEYNMAN_SYMBOLS=SYMBOLS, FEYNMAN_SEED="42", HF_HUB_OFFLINE="1", GX_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1",
               # the daemon of `dagster dev` would otherwise start runs of its own during the test: the after-close
               # sensor (yesterday's session is due), the freshness sensor, and any nightly schedule whose hour
               # the test happens to cross (writing to the warehouse the launched run has open)
               FEYNMAN_AUTOMATION="off", FEYNMAN_BACKTEST_CRON=NEVER_ON_THE_TEST_CLOCK,
               FEYNMAN_ARCHIVE_CRON=NEVER_ON_THE_TEST_CLOCK, FEYNMAN_BACKUP_CRON=NEVER_ON_THE_TEST_CLOCK,
               FEYNMAN_PRUNE_CRON=NEVER_ON_THE_TEST_CLOCK)
    return env


def _feynman_run(env: dict[str, str]) -> str:
    """`feynman run` for the two sessions: the deployed `main` job once per session, then dbt."""
    cmd = [sys.executable, "-m", "orchestration.cli", "run", "--days", str(len(SESSIONS)), "--end-date",
           SESSIONS[-1], "--no-warm-up"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert f"days: {len(SESSIONS)} ({SESSIONS[0]} .. {SESSIONS[-1]})" in proc.stdout, proc.stdout[-3000:]
    return proc.stdout


def _bars_rows(warehouse: Path) -> dict[str, int]:
    """Rows of bars_1m per UTC day, read from the warehouse file (nothing else has it open yet)."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT CAST(ts AT TIME ZONE 'UTC' AS DATE), count(*) FROM bars_1m GROUP BY 1").fetchall()
    return {day.isoformat(): n for day, n in rows}


def _stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc`` (dagster dev and its children), SIGKILL what is left after."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _data(url: str, query: str) -> dict:
    answer = _graphql(url, query)
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def _main_runs(url: str) -> list[dict]:
    """The runs of the `main` job, newest first: run id, status and partition, as the instance records them."""
    results = _data(url, """{ runsOrError(filter: {pipelineName: "main"}) { ... on Runs { results {
        runId status tags { key value } } } } }""")["runsOrError"]["results"]
    return [{"id": r["runId"], "status": r["status"],
             "partition": next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), None)}
            for r in results]


def _latest_check_results(url: str) -> dict[str, tuple[bool, str]]:
    """bars_1m check -> (passed, partition) of its evaluation for the latest materialisation, from the instance."""
    asset = ", ".join(f'"{part}"' for part in BARS_1M.split("/"))
    nodes = _data(url, f"""{{ assetNodes(assetKeys: [{{path: [{asset}]}}]) {{ assetChecksOrError {{
        ... on AssetChecks {{ checks {{ name executionForLatestMaterialization {{
            evaluation {{ success partition }} }} }} }} }} }} }}""")["assetNodes"]
    checks = nodes[0]["assetChecksOrError"]["checks"]
    return {c["name"]: (c["executionForLatestMaterialization"]["evaluation"]["success"],
                        c["executionForLatestMaterialization"]["evaluation"]["partition"])
            for c in checks if (c["executionForLatestMaterialization"] or {}).get("evaluation")}


def _code_location(url: str) -> tuple[str, str, str]:
    """(load status, what loaded, its error if any) of the workspace's code location `feynman`."""
    entries = _data(url, """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }""")["workspaceOrError"]
    entry = next((e for e in entries["locationEntries"] if e["name"] == "feynman"), None)
    if entry is None:
        return ("ABSENT", "", "")
    loaded = entry["locationOrLoadError"] or {}
    return (entry["loadStatus"], loaded.get("__typename", ""), loaded.get("message", "")[:3000])


def _daemons_healthy(url: str) -> bool:
    statuses = _data(url, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
    wanted = {"QUEUED_RUN_COORDINATOR", "SENSOR", "SCHEDULER"}
    healthy = {s["daemonType"] for s in statuses["instance"]["daemonHealth"]["allDaemonStatuses"] if s["healthy"]}
    return wanted <= healthy


@pytest.fixture(scope="module")
def bars_1m_check_specs() -> dict:
    """bars_1m check -> its spec (description, blocking), from the definitions the UI serves."""
    import dagster as dg

    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(BARS_1M.split("/"))
    return {check.name: graph.get_check_spec(check) for check in graph.asset_check_keys
            if check.asset_key == key}


def _exchange_sessions(first: str | None = None, last: str | None = None) -> list[str]:
    """The daily partition keys of the default (XNYS) calendar from its default start, within [first, last]."""
    from assets.partitions import session_partitions
    from resources.env_config import DEFAULT_CALENDAR, DEFAULT_PARTITIONS_START

    keys = session_partitions(DEFAULT_PARTITIONS_START, DEFAULT_CALENDAR).get_partition_keys()
    return [k for k in keys if (first is None or k >= first) and (last is None or k <= last)]


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[DagsterUI]:
    root = tmp_path_factory.mktemp("dagster-ui")
    env = _child_env(root)
    _feynman_run(env)
    assert (root / "dagster_home" / "dagster.yaml").exists()
    bars_rows = _bars_rows(root / "data" / "warehouse.duckdb")
    assert sorted(bars_rows) == SESSIONS, bars_rows

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "dagster_dev.log"
    with open(log_path, "wb") as log:
        # what `make ui` runs: the webserver and the daemon (the instance's queued run coordinator needs it)
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
             "-w", "workspace.yaml"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: the teardown stops the webserver, daemon, code servers
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"dagster dev exited with {server.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not answer on {url} in 120 s:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.5)
        # dagster dev serves before its code location has loaded: wait for the definitions
        while (location := _code_location(url))[0] != "LOADED":
            if time.monotonic() > deadline + 120:
                pytest.fail(f"the code location is {location} after 240 s:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.5)
        assert location[1] == "RepositoryLocation", f"the code location did not load: {location}"
        # the "Join the Dagster community" dialog shows once per instance on localhost: mark it seen
        assert _graphql(url, "mutation { setNuxSeen }") == {"data": {"setNuxSeen": True}}
        yield DagsterUI(url=url, log=log_path, bars_rows=bars_rows)
    finally:
        _stop_group(server)
        redis_dir = root / "data" / "redis"
        if redis_dir.exists():  # the runs started the embedded Redis of the hot state
            from resources.hot_state import EmbeddedRedis

            EmbeddedRedis(redis_dir).stop()


@pytest.fixture(scope="module")
def browser(chromium, dagster_ui):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    profile = tempfile.mkdtemp(prefix="feynman-chromium-")
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={profile}", "--window-size=1920,2300"]:
        options.add_argument(flag)
    # an explicit driver path: Selenium Manager (which would look for drivers online) is never called
    service = Service(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver_pid = service.process.pid
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            try:  # chromedriver led its own process group, chromium's processes included
                os.killpg(driver_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(profile, ignore_errors=True)


# ---- helpers --------------------------------------------------------------------------------------------------
def _body_text(driver) -> str:
    from selenium.common.exceptions import WebDriverException

    try:
        return driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    except WebDriverException:
        return ""


def _wait_for(driver, what: str, condition: Callable[[str], bool], timeout_s: float = WAIT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = _body_text(driver)
        if condition(text):
            return text
        if time.monotonic() > deadline:
            name = what.replace(" ", "_")
            SHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SHOTS / f"timeout_{name}.png"))
            pytest.fail(f"the UI did not show {what} within {timeout_s} s at {driver.current_url}; "
                        f"page text:\n{text[:3000]}", pytrace=False)
        time.sleep(0.25)


def _wait_until_stable(driver, script: str, polls: int = 3, timeout_s: float = 15) -> None:
    """Wait until ``script``'s value is the same ``polls`` times in a row (layout and zoom have settled)."""
    deadline = time.monotonic() + timeout_s
    last, same = None, 0
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        same = same + 1 if value == last and value else 0
        if same >= polls:
            return
        last = value
        time.sleep(0.3)


def _screenshot(driver, name: str) -> Path:
    text = _body_text(driver)
    assert "Join the Dagster community" not in text, "the community dialog covers the page"
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    assert path.stat().st_size > 20_000, f"{path} is suspiciously small (a blank page?)"
    return path


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _click(driver, xpath: str, what: str, timeout_s: float = WAIT_S) -> None:
    """Click the first visible element at ``xpath`` once it is there (re-rendered or covered for a moment: retry)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            shown = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
            if shown:
                shown[0].click()
                return
            error = "not on the page"
        except WebDriverException as exc:
            error = exc.msg
        if time.monotonic() > deadline:
            SHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SHOTS / f"timeout_click_{what.replace(' ', '_')}.png"))
            pytest.fail(f"could not click {what} ({xpath}) within {timeout_s} s at {driver.current_url}: {error}",
                        pytrace=False)
        time.sleep(0.25)


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _between(lines: list[str], first: Callable[[str], bool], last: str) -> list[str]:
    """The lines after the first line where ``first`` holds, up to ``last``, consecutive repeats dropped (the UI
    draws a list entry's label twice: once in a tooltip target)."""
    start = next((i for i, line in enumerate(lines) if first(line)), None)
    if start is None or last not in lines[start:]:
        return []
    out: list[str] = []
    for line in lines[start + 1:lines.index(last, start)]:
        if not out or out[-1] != line:
            out.append(line)
    return out


def _run_header_status(text: str, short_id: str) -> str | None:
    """The status the run page's header shows next to ``Runs / <short id>``."""
    lines = _lines(text)
    for i in range(len(lines) - 3):
        if lines[i:i + 3] == ["Runs", "/", short_id]:
            return lines[i + 3]
    return None


# ---- the steps ------------------------------------------------------------------------------------------------
def _asset_graph(driver, url: str) -> None:
    """The global asset lineage (the "Lineage" entry of the navigation): one box per group, collapsed at first."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.set_window_size(1920, 2300)
    driver.get(f"{url}/asset-groups")
    _wait_for(driver, "the asset groups", lambda t: "Global asset lineage" in t and all(g in _lines(t) for g in GROUPS))
    # expand every group (the graph's own shortcut, Alt+E); reload the resulting URL so the view is fitted to it
    ActionChains(driver).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()
    deadline = time.monotonic() + WAIT_S
    while "expanded=" not in driver.current_url:
        assert time.monotonic() < deadline, "Alt+E did not expand the asset groups"
        time.sleep(0.2)
    driver.get(driver.current_url)
    graph_text = _wait_for(driver, "the asset graph", lambda t: all(a in _lines(t) for a in GRAPH_ASSETS))
    _wait_until_stable(driver, "return ['ticks', 'bars_1m', 'signals'].map(n => { const e = document.evaluate("
                               "`//*[text()='${n}']`, document, null, 9, null).singleNodeValue; "
                               "return e ? JSON.stringify(e.getBoundingClientRect()) : ''; }).join()")
    lines = _lines(graph_text)
    for asset in GRAPH_ASSETS:
        assert asset in lines, f"{asset} is not on the global asset graph"
    assert any(line.startswith("market") and line.endswith("embeddings") for line in lines)  # shown shortened
    _screenshot(driver, "asset_graph.png")


def _bars_1m_page(driver, url: str, bar_checks: dict[str, bool], n_bars: int) -> None:
    """The bars_1m page: latest materialisation (the last session), its metadata, the quality table, the chart."""
    from selenium.webdriver.common.by import By

    driver.set_window_size(1920, 1700)
    driver.get(f"{url}/assets/{BARS_1M}")
    expected = ["Latest materialization", PARTITION, "Latest check results", "Row count", "Description",
                "Metadata", "n_ticks", "built from ticks", "price_chart", "quality", *BAR_CHECKS,
                "Upstream assets", "duckdb / ticks", "Downstream assets", "duckdb / features", "duckdb / bars_5m"]
    overview = _wait_for(driver, "the bars_1m overview", lambda t: all(e in t for e in expected))
    row_count = _lines(overview[overview.index("Row count"):])[1]  # the partition's rows in the warehouse
    assert n_bars > 0 and row_count == f"{n_bars:,}", (n_bars, row_count)
    # the status row counts the latest check results: one badge for the failed (WARN) checks, one for the passed,
    # one for the checks not evaluated yet (the freshness check, which its own sensor runs)
    badges = [int(v) for v in _lines(overview[overview.index("Latest check results"):overview.index("Row count")])
              if v.isdigit()]
    n_passed = sum(bar_checks.values())
    assert sorted(badges) == sorted(n for n in (len(bar_checks) - n_passed, n_passed, 1) if n), badges
    _screenshot(driver, "bars_1m.png")

    # the price chart (markdown metadata with an embedded PNG) opens in a dialog
    links = driver.find_elements(By.XPATH, "//tr[td[normalize-space()='price_chart']]"
                                           "//*[contains(text(), 'Show Markdown')]")
    assert links, "no [Show Markdown] link on the price_chart row"
    links[0].click()
    deadline = time.monotonic() + WAIT_S
    while not driver.execute_script(
            "const i = document.querySelector('[role=dialog] img'); return !!i && i.complete && i.naturalWidth > 300"):
        assert time.monotonic() < deadline, "the price chart image did not load"
        time.sleep(0.2)
    _wait_until_stable(driver, "let e = document.querySelector('[role=dialog]'), o = 1; "
                               "for (; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity); "
                               "return o === 1 && document.getAnimations().length === 0 ? 'settled' : ''")
    _screenshot(driver, "bars_1m_price_chart.png")
    driver.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Close']").click()


def _checks_tab(driver, url: str, bar_checks: dict[str, bool], specs: dict) -> None:
    """The Checks tab: every check of bars_1m with its latest status; selected, each shows its description."""
    # first with the blocking Great Expectations suite selected: the README's screenshot
    driver.set_window_size(1920, 1300)
    driver.get(f"{url}/assets/{BARS_1M}?view=checks&checkDetail=great_expectations_suite")
    checks_text = _wait_for(driver, "the bars_1m checks",
                            lambda t: f"Checks ({len(specs)})" in t and "Evaluation result" in t
                            and "Succeeded" in t and all(name in t for name in specs))
    lines = _lines(checks_text)
    for name, passed in bar_checks.items():
        # the list shows each check's name (twice while a tooltip is up), then its latest status
        status = next(line for line in lines[lines.index(name):] if line != name)
        assert status == ("Succeeded" if passed else "Failed"), f"{name}: the UI says {status!r}, the instance {passed}"
    assert next(line for line in lines[lines.index("freshness_check"):] if line != "freshness_check") == \
        "Not Evaluated"  # its sensor (off here) runs it
    detail = _lines(checks_text[checks_text.index("Execute all"):])
    detail = detail[detail.index("About"):]
    assert "This is a blocking asset check." in detail
    assert any(line.startswith("Great Expectations suite bars_1m_suite") for line in detail)
    assert detail[detail.index("Evaluation result") + 1:].count("Passed") >= 1
    _screenshot(driver, "bars_1m_checks.png")

    # then each check in turn, by a click on its entry in the list: the About section shows its description and
    # whether it blocks, as the check spec in the code says
    def about(text: str) -> str:
        if "About" not in text or "Latest execution" not in text.split("About", 1)[1]:
            return ""
        return _squeeze(text.split("About", 1)[1].split("Latest execution", 1)[0])

    for name in sorted(specs):
        spec = specs[name]
        _click(driver, f"//*[normalize-space(text())='{name}']", f"the check {name}")
        blocking = "This is a blocking asset check." if spec.blocking else "This is a non-blocking asset check."
        wanted = _squeeze(spec.description)
        assert len(wanted) > 40, f"{name} has no real description in the code: {spec.description!r}"
        text = _wait_for(driver, f"the description of {name}",
                         lambda t: f"checkDetail={name}" in driver.current_url and wanted in about(t))
        assert about(text).startswith(blocking), (name, about(text)[:200])
        if name == "volume_spikes":  # the longest description: how a WARN check reads
            _screenshot(driver, "bars_1m_check_description.png")


def _main_job_runs(driver, url: str) -> dict[str, str]:
    """The `main` job's Runs tab lists the runs `feynman run` made, one per session, with its partition tag."""
    runs = _main_runs(url)
    assert sorted((r["partition"], r["status"]) for r in runs) == [(s, "SUCCESS") for s in SESSIONS], runs
    run_of = {r["partition"]: r["id"] for r in runs}

    driver.set_window_size(1920, 1000)
    driver.get(f"{url}/locations/feynman/jobs/main")
    _wait_for(driver, "the main job page", lambda t: "Materialize all…" in t and "One trading day end to end" in t)
    _click(driver, "//a[contains(@href, '/jobs/main/runs')]", "the Runs tab of the main job")
    from selenium.webdriver.common.by import By

    def rows() -> dict[str, list[str]]:
        found = {}
        for row in driver.find_elements(By.XPATH, "//div[contains(@class, 'RunsFeedRow_rowGrid')]"):
            lines = _lines(row.text)
            if lines:
                found[lines[0]] = lines
        return found

    def listed(_: str) -> bool:
        shown = rows()
        return driver.current_url.endswith("/jobs/main/runs") and all(
            run_id[:8] in shown and f"partition: {partition}" in shown[run_id[:8]] and "Success" in shown[run_id[:8]]
            for partition, run_id in run_of.items())

    _wait_for(driver, "the runs of both sessions as Success", listed)
    assert len(rows()) == len(SESSIONS), sorted(rows())
    _screenshot(driver, "main_runs.png")
    return run_of


def _partitions_tab(driver, url: str, run_of: dict[str, str]) -> None:
    """The Partitions tab of bars_1m: exchange sessions only (no weekend), the two sessions materialised."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.set_window_size(1920, 1100)
    driver.get(f"{url}/assets/{BARS_1M}")
    _wait_for(driver, "the bars_1m overview", lambda t: "Latest materialization" in t)
    _click(driver, "//*[self::a or self::button][normalize-space()='Partitions']", "the Partitions tab")
    n_sessions = len(_exchange_sessions())
    text = _wait_for(driver, "the bars_1m partitions",
                     lambda t: "Partitions Selected" in t and f"Materialized ({len(SESSIONS)})" in t)
    # every partition at first: as many as the exchange's sessions since the first partition, not calendar days
    n_all = int(next(line for line in _lines(text) if line.endswith(" Partitions Selected")).split()[0])
    assert n_all in {n_sessions, len(_exchange_sessions())}, n_all  # before and after: a day may begin between

    # a range with a weekend inside, typed in the range box as a user does
    box = driver.find_element(By.XPATH, "//input[starts-with(@placeholder, 'ex: ')]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(f"[{RANGE[0]}...{RANGE[1]}]", Keys.ENTER)
    sessions = _exchange_sessions(*RANGE)
    assert not set(WEEKEND) & set(sessions) and set(SESSIONS) | {LAUNCH_PARTITION} <= set(sessions)
    missing = len(sessions) - len(SESSIONS)

    def partition_list(t: str) -> list[str]:
        return _between(_lines(t), lambda line: line.startswith("Missing ("), "No partition selected")

    text = _wait_for(driver, f"the {len(sessions)} sessions of {RANGE[0]}..{RANGE[1]}",
                     lambda t: f"{len(sessions)} Partitions Selected" in t and f"Missing ({missing})" in t
                     and partition_list(t) == sorted(sessions, reverse=True))
    for day in WEEKEND:
        assert day not in text, f"{day} (a weekend day) is on the Partitions tab"
    # only the materialised ones: untick "Missing"
    _click(driver, "//label[starts-with(normalize-space(), 'Missing (')]", "the Missing filter")
    _wait_for(driver, "only the materialised sessions", lambda t: partition_list(t) == sorted(SESSIONS, reverse=True))
    _click(driver, "//label[starts-with(normalize-space(), 'Missing (')]", "the Missing filter")
    _wait_for(driver, "every session again", lambda t: partition_list(t) == sorted(sessions, reverse=True))

    # each session's latest materialisation is the run of `feynman run` for it (the last one selected: the README's)
    for day in sorted(SESSIONS):
        _click(driver, f"//*[normalize-space(text())='{day}']", f"the partition {day}")

        def selected(t: str, day: str = day) -> bool:
            lines = _lines(t)
            return (driver.current_url.endswith(f"partition={day}") and "Materialized" in lines
                    and run_of[day][:8] in lines and "n_ticks" in lines and "No partition selected" not in lines)

        _wait_for(driver, f"the materialisation of {day}", selected)
    _screenshot(driver, "bars_1m_partitions.png")


def _launchpad_launch(driver, ui: DagsterUI) -> None:
    """From the `main` job's launchpad, one partition launched: queued, run by the daemon, Success."""
    url = ui.url
    before = {r["id"] for r in _main_runs(url)}
    deadline = time.monotonic() + 120
    while not _daemons_healthy(url):  # dagster dev starts the daemon next to the webserver
        assert time.monotonic() < deadline, f"the daemon is not healthy after 120 s:\n{ui.log.read_text()[-5000:]}"
        time.sleep(1)

    driver.set_window_size(1920, 1300)
    driver.get(f"{url}/locations/feynman/jobs/main")
    _wait_for(driver, "the main job page", lambda t: "Materialize all…" in t)
    # the menu next to "Materialize all…"
    _click(driver, "(//button[normalize-space()='Materialize all…']/following-sibling::button"
                   " | //button[normalize-space()='Materialize all…']/../following-sibling::*//button)[1]",
           "the menu of Materialize all")
    _click(driver, "//*[normalize-space(text())='Open launchpad']", "Open launchpad")
    _wait_for(driver, "the launchpad", lambda t: "Launchpad (configure assets)" in t and "market_data" in t)
    partition_box = "//*[@role='dialog']//input[@placeholder='Partition']"
    _click(driver, partition_box, "the partition box")
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, partition_box).send_keys(LAUNCH_PARTITION)
    _click(driver, f"//*[@role='menuitem'][normalize-space()='{LAUNCH_PARTITION}']",
           f"the suggestion {LAUNCH_PARTITION}")
    # the partition's run config and tags load, then the Materialize button is enabled again
    launch = "//*[@role='dialog']//button[normalize-space()='Materialize' and not(@disabled)]"
    _wait_for(driver, "the launchpad with its partition, no config error and Materialize enabled",
              lambda t: driver.execute_script("const i = document.evaluate(arguments[0], document, null, 9, null)"
                                              ".singleNodeValue; return i ? i.value : ''", partition_box)
              == LAUNCH_PARTITION and f"partition: {LAUNCH_PARTITION}" in _lines(t) and "No errors" in _lines(t)
              and bool(driver.find_elements(By.XPATH, launch)))
    # the pointer rests where the suggestion was, now on the partition tag: move it off, so no tooltip covers the box
    from selenium.webdriver.common.action_chains import ActionChains

    title = "//*[@role='dialog']//*[normalize-space(text())='Launchpad (configure assets)']"
    ActionChains(driver).move_to_element(driver.find_element(By.XPATH, title)).perform()
    _wait_for(driver, "the launchpad without a tooltip", lambda t: "Copy tag" not in t)
    _wait_until_stable(driver, "return document.getAnimations().length === 0 ? 'settled' : ''")
    _screenshot(driver, "launchpad.png")
    _click(driver, launch, "Materialize")

    # the UI opens the new run's page; the run is queued, the daemon starts it
    _wait_for(driver, "the launched run's page", lambda t: "/runs/" in driver.current_url)
    run_id = driver.current_url.split("/runs/", 1)[1].split("?")[0].split("/")[0]
    assert run_id not in before
    text = _wait_for(driver, "the launched run's end",
                     lambda t: _run_header_status(t, run_id[:8]) in ("Success", "Failure", "Canceled"),
                     timeout_s=RUN_WAIT_S)
    status = _run_header_status(text, run_id[:8])
    recorded = {r["id"]: r for r in _main_runs(url)}[run_id]
    assert status == "Success", (f"the launched run {run_id} ended {status} (instance: {recorded['status']}); "
                                 f"page:\n{text[:3000]}\n--- dagster dev ---\n{ui.log.read_text()[-5000:]}")
    assert recorded == {"id": run_id, "status": "SUCCESS", "partition": LAUNCH_PARTITION}, recorded
    # the step panel follows the page's live event stream, which can stop short of the run's last events (the
    # webserver's SQLite watcher waits for writes to the run's .db file, and WAL writes land in its .db-wal): a
    # reload reads the whole event log, as a user does when the page looks stuck
    driver.refresh()
    text = _wait_for(driver, "the launched run's steps all done",
                     lambda t: "Preparing (0)" in _lines(t) and "Executing (0)" in _lines(t)
                     and not any(line.startswith("Not executed (") for line in _lines(t)))
    lines = _lines(text)
    assert f"partition: {LAUNCH_PARTITION}" in lines and "Errored (0)" in lines, text[:3000]
    assert int(next(line for line in lines if line.startswith("Succeeded (")).split("(")[1].rstrip(")")) >= 7, lines
    # the step timeline scrolls and zooms into place after the reload: wait until its first and last step boxes
    # stand still inside the window
    _wait_until_stable(driver, "const r = ['duckdb__ticks', 'duckdb__signals'].map(n => { const e = document.evaluate("
                               "`//*[text()='${n}']`, document, null, 9, null).singleNodeValue; if (!e) return ''; "
                               "const b = e.getBoundingClientRect(); return b.width > 0 && b.left >= 0 && "
                               "b.right <= innerWidth ? JSON.stringify(b) : ''; }); "
                               "return r.every(x => x) ? r.join() : ''")
    _screenshot(driver, "launched_run.png")


# ---- the test -------------------------------------------------------------------------------------------------
def test_what_a_user_sees_after_feynman_run(dagster_ui, browser, bars_1m_check_specs):
    driver, url = browser, dagster_ui.url
    specs = bars_1m_check_specs
    assert sorted(specs) == sorted([*BAR_CHECKS, "freshness_check"])
    latest = _latest_check_results(url)  # the checks of the last session's run, as the instance recorded them
    assert sorted(latest) == sorted(BAR_CHECKS) and {p for _, p in latest.values()} == {PARTITION}, latest
    bar_checks = {name: passed for name, (passed, _) in latest.items()}

    _asset_graph(driver, url)
    _bars_1m_page(driver, url, bar_checks, dagster_ui.bars_rows[PARTITION])
    _checks_tab(driver, url, bar_checks, specs)
    run_of = _main_job_runs(driver, url)
    _partitions_tab(driver, url, run_of)
    _launchpad_launch(driver, dagster_ui)  # last: it adds a materialisation, the pages above show the CLI's

    if os.environ.get("FEYNMAN_UPDATE_SCREENSHOTS") == "1":  # refresh the README's copies after a passing run
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for name in README_SHOTS:
            shutil.copyfile(SHOTS / name, DOCS_SHOTS / name)
