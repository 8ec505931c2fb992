"""What every benchmark does with its figures besides printing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """``--json``: every figure of the run, for later comparison."""
    if path:
        path.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {path}")
