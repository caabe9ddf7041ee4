"""Run a benchmark script again in a child process with FUNNEL_TW_PURE_PYTHON=1.

The C extensions are chosen at import, so the pure-Python side of a side-by-side figure
needs a process of its own; the child prints one JSON document, which this returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_pure_python(script: str, arguments: list[str], timeout: float) -> Any:
    """``script`` with ``arguments`` under FUNNEL_TW_PURE_PYTHON=1: its JSON output."""
    child = subprocess.run(
        [sys.executable, script, *arguments],
        env={**os.environ, "FUNNEL_TW_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(child.stdout)
