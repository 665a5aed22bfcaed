"""Logging: loggers made at import time follow the configuration made later."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
from borealdb.nodes.log import configure_logging, get_logger
early = get_logger(component="sql")          # as module-level loggers are, at import
configure_logging(node_id="i-a1", az="a", role="writer", level="warning", json=True)
early.info("hidden")                         # below the configured level
early.warning("shown", vdl=7)
"""


def test_a_logger_made_before_configure_logging_uses_its_level_and_renderer():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["shown"]
    assert lines[0] | {"timestamp": None} == {"event": "shown", "vdl": 7, "component": "sql", "node": "i-a1", "az": "a",
                                              "role": "writer", "level": "warning", "timestamp": None}
