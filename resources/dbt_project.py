"""The dbt project, its CLI resource and its manifest (Dagster needs it to load the dbt assets).

``prepare_manifest()`` runs ``dbt parse`` (offline: no packages, anonymous usage stats off in
dbt_project.yml and in the environment dagster-dbt gives dbt) into ``dbt/target/manifest.json``.
The set-up step calls it; loading the definitions calls ``ensure_manifest()``, which parses only
when the manifest is missing or older than a file of the dbt project, so edits to the dbt
project show up on the next reload of ``dagster dev``. Parsing does not open the warehouse.
Concurrent callers are serialised by a lock file next to the manifest.

Kept free of the asset modules (``assets.dbt_models`` imports this one) so the set-up can parse
before anything reads the manifest.
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import cached_property
from importlib.metadata import version
from pathlib import Path

from dagster._utils import run_with_concurrent_update_guard
from dagster_dbt import DbtCliResource, DbtProject
from packaging.version import Version

from resources.paths import PROJECT_ROOT

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt"
# what `dbt parse` reads: a change to any of these makes the manifest stale
_PROJECT_INPUTS = ("dbt_project.yml", "profiles.yml", "models", "macros", "tests")


def dbt_executable() -> str:
    """The ``dbt`` of this interpreter's environment: ``.venv/bin`` is often not on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


class FeynmanDbtCliResource(DbtCliResource):
    """``DbtCliResource`` that takes the dbt-core version from this environment's package metadata.

    The stock resource runs ``dbt --version`` once per instance (so once per run) to learn it,
    and that command also asks PyPI for the latest dbt-core and adapter (two HTTP requests with
    1 s timeouts, ~3 s in all): network access the offline platform must not need. Valid while
    ``dbt_executable`` is the dbt of this environment, which is the default here.
    """

    @cached_property
    def _cli_version(self) -> Version:
        return Version(version("dbt-core"))


def dbt_cli(project: DbtProject | None = None) -> FeynmanDbtCliResource:
    """The CLI resource for the Feynman dbt project (project and profiles in ``<repo>/dbt``)."""
    project = project or dbt_project()
    return FeynmanDbtCliResource(project_dir=project, profiles_dir=os.fspath(project.profiles_dir),
                                 dbt_executable=dbt_executable())


def dbt_project() -> DbtProject:
    """The Feynman dbt project (profiles.yml lives in the project folder)."""
    return DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def _newest_input_mtime(project_dir: Path) -> float:
    mtimes = [0.0]
    for name in _PROJECT_INPUTS:
        path = project_dir / name
        if path.is_file():
            mtimes.append(path.stat().st_mtime)
        elif path.is_dir():
            mtimes.extend(f.stat().st_mtime for f in path.rglob("*") if f.is_file())
    return max(mtimes)


def manifest_is_stale(project: DbtProject | None = None) -> bool:
    """True when the manifest is missing or older than a file of the dbt project."""
    project = project or dbt_project()
    if not project.manifest_path.exists():
        return True
    return project.manifest_path.stat().st_mtime < _newest_input_mtime(Path(project.project_dir))


def prepare_manifest(force: bool = False, project: DbtProject | None = None) -> Path:
    """Run ``dbt parse`` when the manifest is stale (or ``force``); return the manifest path."""
    project = project or dbt_project()
    if force or manifest_is_stale(project):
        # a lock file beside the manifest serialises concurrent parsers; a waiter whose manifest
        # was rewritten meanwhile skips its own parse
        run_with_concurrent_update_guard(project.manifest_path, _parse, project=project)
    if not project.manifest_path.exists():
        raise FileNotFoundError(f"dbt parse did not write {project.manifest_path}")
    return project.manifest_path


def _parse(project: DbtProject) -> None:
    # dagster-dbt's own preparer (DbtProject.prepare / prepare_if_dev) calls a bare `dbt`, which
    # fails when the venv is not activated, so parse with an explicit executable
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    dbt_cli(project).cli(["parse", "--quiet"], target_path=project.target_path).wait()


def ensure_manifest(project: DbtProject) -> Path:
    """At definitions load (also under ``dagster dev``): parse only when missing or stale."""
    return prepare_manifest(project=project)


if __name__ == "__main__":
    print(prepare_manifest(force=True))
