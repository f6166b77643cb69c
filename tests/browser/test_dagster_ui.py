"""The Dagster UI in a real browser: the global asset lineage and the bars_1m page with its checks.

One partition of ticks -> bars_1m is materialised with the simulator into a fresh DAGSTER_HOME and data folder
(a child process, so the real ``orchestration.definitions:defs`` builds its resources for those folders), then
``dagster-webserver`` serves that instance on a free loopback port and Debian's chromium, driven by selenium and
Debian's chromedriver, opens the pages. Screenshots land in ``test-artifacts/screenshots/`` (the README's copies are
in ``docs/screenshots/``). Chromium is installed by ``ensure_chromium.sh`` when missing; if it can't be, the test
fails (it never skips).
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

PARTITION = "2024-03-05"  # a Tuesday NYSE session
SYMBOLS = "AAPL,MSFT,SPY"
BAR_CHECKS = ["great_expectations_suite", "duplicate_keys", "timestamps_increasing", "large_one_minute_moves",
              "gap_jumps", "isolated_outliers", "volume_spikes", "session_gaps", "stale_data"]
GRAPH_ASSETS = ["ticks", "bars_1m", "bars_5m", "features", "physics_states", "forecasts", "signals", "archives"]
GROUPS = ["ingest", "bars", "features", "physics", "forecasts", "embeddings", "signals", "rollups", "marts",
          "archive"]
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars"]
WAIT_S = 60


# ---- set-up: chromium, a materialised partition, the webserver ---------------------------------------------------
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
    checks: dict[tuple[str, str], bool]  # (asset, check name) -> passed, as the materialisation reported them


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("FEYNMAN_DUCKDB", "FEYNMAN_LANCEDB", "FEYNMAN_ARCHIVE", "REDIS_URL", "FEYNMAN_FILES_PATH",
                 "ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        env.pop(name, None)
    env.update(DAGSTER_HOME=str(root / "dagster_home"), FEYNMAN_DATA_DIR=str(root / "data"), FEYNMAN_SOURCE="sim",
               FEYNMAN_SYMBOLS=SYMBOLS, FEYNMAN_SEED="42", HF_HUB_OFFLINE="1", GX_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1")
    return env


def _materialise(env: dict[str, str]) -> dict[tuple[str, str], bool]:
    proc = subprocess.run([sys.executable, "-m", "tests.browser.materialise_partition", PARTITION], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"materialising {PARTITION} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    checks = {}
    for line in proc.stdout.splitlines():
        if line.startswith("check "):
            _, asset, name, status = line.split()
            checks[(asset, name)] = status == "passed"
    return checks


def _stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc`` (webserver + code server), SIGKILL what is left after the grace."""
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


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> Iterator[DagsterUI]:
    root = tmp_path_factory.mktemp("dagster-ui")
    env = _child_env(root)
    checks = _materialise(env)
    assert (root / "dagster_home" / "dagster.yaml").exists()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "webserver.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
             "-w", "workspace.yaml"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: the teardown stops the code server with it
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {server.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer on {url} in 120 s:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.5)
        # the "Join the Dagster community" dialog shows once per instance on localhost: mark it seen
        assert _graphql(url, "mutation { setNuxSeen }") == {"data": {"setNuxSeen": True}}
        yield DagsterUI(url=url, checks=checks)
    finally:
        _stop_group(server)
        redis_dir = root / "data" / "redis"
        if redis_dir.exists():  # nothing here starts Redis today; stop it should a later change do so
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


# ---- the test -------------------------------------------------------------------------------------------------
def test_asset_graph_and_bars_1m_page_with_checks(dagster_ui, browser):
    driver, url = browser, dagster_ui.url
    bar_checks = {name: passed for (asset, name), passed in dagster_ui.checks.items() if asset == "duckdb/bars_1m"}
    assert sorted(bar_checks) == sorted(BAR_CHECKS)

    # global asset lineage (the "Lineage" entry of the navigation): one box per group, collapsed at first
    driver.set_window_size(1920, 2300)
    driver.get(f"{url}/asset-groups")
    _wait_for(driver, "the asset groups", lambda t: "Global asset lineage" in t and all(g in _lines(t) for g in GROUPS))
    # expand every group (the graph's own shortcut, Alt+E); reload the resulting URL so the view is fitted to it
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

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

    # the bars_1m page: latest materialisation of the partition, its metadata and the quality table
    driver.set_window_size(1920, 1700)
    driver.get(f"{url}/assets/duckdb/bars_1m")
    expected = ["Latest materialization", PARTITION, "Latest check results", "Row count", "Description",
                "Metadata", "n_ticks", "n_bars", "built from ticks", "price_chart", "quality", *BAR_CHECKS,
                "Upstream assets", "duckdb / ticks", "Downstream assets", "duckdb / features", "duckdb / bars_5m"]
    overview = _wait_for(driver, "the bars_1m overview", lambda t: all(e in t for e in expected))
    n_bars = next(int(line) for line in _lines(overview[overview.index("n_bars"):])[1:] if line.isdigit())
    row_count = _lines(overview[overview.index("Row count"):])[1]
    assert n_bars > 0 and row_count == f"{n_bars:,}", (n_bars, row_count)
    # the status row counts the latest check results: one badge for the failed (WARN) checks, one for the passed,
    # one for the checks not evaluated yet (the freshness check, which its own sensor runs)
    badges = [int(v) for v in _lines(overview[overview.index("Latest check results"):overview.index("Row count")])
              if v.isdigit()]
    n_passed = sum(bar_checks.values())
    assert sorted(badges) == sorted(n for n in (len(bar_checks) - n_passed, n_passed, 1) if n), badges
    _screenshot(driver, "bars_1m.png")

    # the price chart (markdown metadata with an embedded PNG) opens in a dialog
    from selenium.webdriver.common.by import By

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

    # the Checks tab, the blocking Great Expectations suite selected: every check of bars_1m with the status of the
    # run that just materialised it, and the freshness check that its sensor runs
    driver.set_window_size(1920, 1300)
    driver.get(f"{url}/assets/duckdb/bars_1m?view=checks&checkDetail=great_expectations_suite")
    checks_text = _wait_for(driver, "the bars_1m checks",
                            lambda t: f"Checks ({len(BAR_CHECKS) + 1})" in t and "Evaluation result" in t
                            and "Succeeded" in t and all(name in t for name in [*BAR_CHECKS, "freshness_check"]))
    lines = _lines(checks_text)
    for name, passed in bar_checks.items():
        # the list shows each check's name (twice while a tooltip is up), then its latest status
        status = next(line for line in lines[lines.index(name):] if line != name)
        assert status == ("Succeeded" if passed else "Failed"), f"{name}: the UI says {status!r}, the run {passed}"
    detail = _lines(checks_text[checks_text.index("Execute all"):])
    detail = detail[detail.index("About"):]
    assert "This is a blocking asset check." in detail
    assert any(line.startswith("Great Expectations suite bars_1m_suite") for line in detail)
    assert detail[detail.index("Evaluation result") + 1:].count("Passed") >= 1
    _screenshot(driver, "bars_1m_checks.png")
