"""HL7 v2 ↔ canonical translations. Code tables are data (`tables.yaml`); segment rules are in `segments`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

_HERE = Path(__file__).parent


@cache
def _tables() -> dict[str, Any]:
    with open(_HERE / "tables.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def table(name: str) -> dict[str, Any]:
    """One named code table from `tables.yaml` (keys are the HL7 codes as strings)."""
    return _tables()[name]
