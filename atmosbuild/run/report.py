"""The `--report FILE` JSON of SPEC 7, written atomically."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from ..fileops import write_atomic


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def write_report(path: str, data: dict) -> None:
    write_atomic(os.path.abspath(path), (json.dumps(data, indent=2) + "\n").encode("utf-8"))
