"""resources.duckdb_host: warehouse files attached to one DuckDB instance per process.

What must hold as before (when every operation opened and closed its own database): another
process can open the file as soon as an operation ends, never while one is open; two files in one
process never see each other's tables; a forked child works with its own instance.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from resources.duckdb_host import close_cursor, open_cursor
from resources.warehouse import WarehouseResource


def _other_process_opens(path: Path) -> bool:
    """Can a separate process open ``path`` read-write right now?"""
    code = f"import duckdb; duckdb.connect({str(path)!r}).close()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_the_file_is_free_between_operations_and_locked_during_one(tmp_path):
    path = tmp_path / "w.duckdb"
    warehouse = WarehouseResource(database=str(path))
    warehouse.append("run_metrics", pl.DataFrame({"metric": ["a"], "message": ["m"]}))
    assert _other_process_opens(path)

    cursor = open_cursor(str(path), read_only=False)
    try:
        assert cursor.execute("SELECT count(*) FROM run_metrics").fetchone()[0] == 1
        assert not _other_process_opens(path)
    finally:
        close_cursor(str(path), cursor)
    assert _other_process_opens(path)


def test_nested_reads_share_one_attachment_and_the_last_detaches(tmp_path):
    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE t AS SELECT 1 AS x").close()
    outer = open_cursor(str(path), read_only=True)
    inner = open_cursor(str(path), read_only=True)
    assert inner.execute("SELECT x FROM t").fetchone() == (1,)
    close_cursor(str(path), inner)
    assert outer.execute("SELECT x FROM t").fetchone() == (1,)  # still attached for the outer user
    with pytest.raises(duckdb.InvalidInputException, match="read-only"):
        open_cursor(str(path), read_only=False)
    close_cursor(str(path), outer)
    assert _other_process_opens(path)


def test_two_files_in_one_process_never_see_each_others_tables(tmp_path):
    a = WarehouseResource(database=str(tmp_path / "a.duckdb"))
    b = WarehouseResource(database=str(tmp_path / "b.duckdb"))
    a.append("run_metrics", pl.DataFrame({"metric": ["only in a"]}))
    b.ensure_schema()
    held_a = open_cursor(a.database, read_only=False)  # a stays attached while b is used
    try:
        assert not b.table_exists("run_metrics")
        b.append("run_metrics", pl.DataFrame({"metric": ["b1", "b2"]}))
        assert held_a.execute("SELECT count(*) FROM run_metrics").fetchone()[0] == 1
    finally:
        close_cursor(a.database, held_a)
    assert b.query("SELECT count(*) AS n FROM run_metrics")["n"][0] == 2
    assert a.query("SELECT metric FROM run_metrics")["metric"].to_list() == ["only in a"]


def _child_appends(database: str) -> None:
    WarehouseResource(database=database).append("run_metrics", pl.DataFrame({"metric": ["from the child"]}))


def test_a_forked_child_uses_its_own_instance(tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "w.duckdb"))
    warehouse.append("run_metrics", pl.DataFrame({"metric": ["from the parent"]}))  # this process has an instance
    child = multiprocessing.get_context("fork").Process(target=_child_appends, args=(warehouse.database,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert sorted(warehouse.query("SELECT metric FROM run_metrics")["metric"].to_list()) == [
        "from the child", "from the parent"]


def test_a_path_with_quotes_is_bound_not_formatted(tmp_path):
    odd = tmp_path / "it's a \"warehouse\"; DROP TABLE x.duckdb"
    warehouse = WarehouseResource(database=str(odd))
    warehouse.append("run_metrics", pl.DataFrame({"metric": ["ok"]}))
    assert warehouse.query("SELECT metric FROM run_metrics")["metric"].to_list() == ["ok"]
    assert odd.exists()


def _child_reports_its_instance(database: str, out) -> None:
    from resources import duckdb_host

    warehouse = WarehouseResource(database=database)
    warehouse.append("run_metrics", pl.DataFrame({"metric": ["from the child"]}))
    settings = dict(duckdb_host._host.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    fresh = dict(duckdb.connect(":memory:", config={"temp_directory": str(Path(database).resolve()) + ".tmp"})
                 .execute("SELECT name, value FROM duckdb_settings()").fetchall())
    out.put({"adopted": duckdb_host._spare is None, "differs": {k: (v, fresh.get(k)) for k, v in settings.items()
                                                                if fresh.get(k) != v}})


def test_a_forked_child_adopts_the_spare_with_the_settings_of_a_fresh_instance(tmp_path, monkeypatch):
    from resources import duckdb_host

    monkeypatch.setattr(duckdb_host, "_spare", None)
    duckdb_host.build_spare_instance()
    spare = duckdb_host._spare
    assert spare.execute("SELECT current_setting('async_threads'), current_setting('threads')").fetchone() == (0, 1)
    database = str(tmp_path / "it's here.duckdb")  # the temp directory is set by statement: quoted
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child_reports_its_instance, args=(database, out))
    child.start()
    report = out.get(timeout=120)
    child.join(120)
    assert child.exitcode == 0
    assert report == {"adopted": True, "differs": {}}
    assert duckdb_host._spare is spare  # the parent never uses its spare
    assert WarehouseResource(database=database).query("SELECT metric FROM run_metrics")["metric"].to_list() == [
        "from the child"]
