"""Quarantine rows of an import belong to that file (its absolute path), not to its base name."""

from __future__ import annotations

from pathlib import Path

from orchestration.ingest import ingest_file


def _trades(path: Path, bad_prices: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["symbol,ts,price,size,side"]
    rows += [f"AAA,2024-03-04T15:00:0{i}Z,{100 + i},10,buy" for i in range(3)]
    rows += [f"AAA,2024-03-04T15:01:0{i}Z,{p},10,sell" for i, p in enumerate(bad_prices)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _quarantine(warehouse) -> dict[str, list[str]]:
    rows = warehouse.query("SELECT partition_key, raw FROM quarantine ORDER BY partition_key, raw")
    out: dict[str, list[str]] = {}
    for key, raw in rows.iter_rows():
        out.setdefault(key, []).append(raw)
    return out


def test_same_base_name_in_two_folders_keeps_both_quarantines(warehouse, tmp_path):
    a = _trades(tmp_path / "a" / "trades.csv", ["-1", "0"])
    b = _trades(tmp_path / "b" / "trades.csv", ["-5"])
    first = ingest_file(warehouse, str(a))
    assert first.n_quarantined == 2
    second = ingest_file(warehouse, str(b))
    assert second.n_quarantined == 1
    got = _quarantine(warehouse)
    assert sorted(got) == [f"ingest:{a.resolve()}", f"ingest:{b.resolve()}"]  # a's rows survived b's import
    assert len(got[f"ingest:{a.resolve()}"]) == 2 and len(got[f"ingest:{b.resolve()}"]) == 1
    assert set(warehouse.query("SELECT DISTINCT source FROM quarantine")["source"]) == {"file:trades.csv"}

    # re-importing the same file (also through a relative path) replaces only its own rows
    before = _quarantine(warehouse)
    ingest_file(warehouse, str(a))
    assert _quarantine(warehouse) == before
    _trades(a, ["-7"])  # the file changed: its quarantine now holds its one bad row, b's are untouched
    ingest_file(warehouse, str(a))
    got = _quarantine(warehouse)
    assert len(got[f"ingest:{a.resolve()}"]) == 1 and "-7" in got[f"ingest:{a.resolve()}"][0]
    assert got[f"ingest:{b.resolve()}"] == before[f"ingest:{b.resolve()}"]


def test_relative_path_is_the_same_import(warehouse, tmp_path, monkeypatch):
    a = _trades(tmp_path / "a" / "trades.csv", ["-1"])
    ingest_file(warehouse, str(a))
    monkeypatch.chdir(tmp_path)
    ingest_file(warehouse, "a/trades.csv")
    assert list(_quarantine(warehouse)) == [f"ingest:{a.resolve()}"]
    assert warehouse.query("SELECT count(*) AS n FROM quarantine")["n"][0] == 1
