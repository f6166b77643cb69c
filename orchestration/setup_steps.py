"""One-off set-up after install: the local Dagster home and the dbt manifest.

Runs offline and is safe to repeat.
"""

from __future__ import annotations

from orchestration.dbt_setup import prepare_manifest
from orchestration.instance import ensure_dagster_home


def main() -> None:
    home = ensure_dagster_home()
    print(f"Dagster home: {home}")
    print(f"dbt manifest: {prepare_manifest()}")


if __name__ == "__main__":
    main()
