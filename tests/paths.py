"""Where the shared real-data pack lives: ``shared/`` beside the checkout (CI and developers)."""

from __future__ import annotations

import os
from pathlib import Path

REAL_DATA = Path(os.environ.get("FEYNMAN_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
