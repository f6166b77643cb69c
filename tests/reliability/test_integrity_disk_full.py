"""A full disk is reported as "No space left on device", not as the failed ROLLBACK that follows it.

The warehouse lives on a real 2 MB tmpfs (the tests run as root in the sandbox and CI container);
where mounting is not permitted, a file-size limit (RLIMIT_FSIZE) in a subprocess gives the kernel's
"File too large" instead, which the same code path must report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from resources.warehouse import WarehouseError, WarehouseResource


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"symbol": ["AAA"] * n, "x": np.random.default_rng(0).standard_normal(n)})


def _fill(folder: Path, leave_bytes: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    yield mount if done.returncode == 0 else None
    if done.returncode == 0:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_at_commit_reports_no_space_and_leaves_the_table_intact(small_disk, tmp_path):
    if small_disk is None:  # no mount permission: the kernel's file-size limit, in a child process
        script = textwrap.dedent(f"""
            import resource, numpy as np, polars as pl
            from resources.warehouse import WarehouseResource, WarehouseError
            wh = WarehouseResource(database={str(tmp_path / 'w.duckdb')!r}); wh.ensure_schema()
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
            n = 400_000
            try:
                wh._write("scratch_full", pl.DataFrame({{"x": np.arange(n) * 1.5}}), delete_sql=None, params=[])
            except WarehouseError as exc:
                print(exc)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert "File too large" in out.stdout and "rollback" not in out.stdout, out.stdout + out.stderr
        return
    warehouse = WarehouseResource(database=str(small_disk / "w.duckdb"))
    warehouse.ensure_schema()
    warehouse._write("scratch_full", _frame(10), delete_sql=None, params=[])
    filler = _fill(small_disk, 64 * 1024)  # the INSERT fits in memory; the WAL write at COMMIT does not
    with pytest.raises(WarehouseError) as info:
        warehouse._write("scratch_full", _frame(50_000), delete_sql=None, params=[])
    message = str(info.value)
    assert "No space left on device" in message and "rollback" not in message.lower()
    assert "scratch_full" in message and "\n" not in message
    filler.unlink()  # space back: the failed write left nothing behind and the next one works
    assert warehouse.query("SELECT count(*) AS n FROM scratch_full")["n"][0] == 10
    warehouse._write("scratch_full", _frame(50_000), delete_sql=None, params=[])
    assert warehouse.query("SELECT count(*) AS n FROM scratch_full")["n"][0] == 50_010
