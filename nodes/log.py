"""Structured logging for every borealdb process.

Each line is key=value (a terminal) or JSON (anything else) and carries the node's
identity: node id, AZ and role, plus whatever the caller binds (epoch, LSNs, pg).

    log = configure_logging(node_id="s-a1", az="a", role="storage")
    log.info("segment_created", volume="main", pg=3, epoch=1)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(*, node_id: str, az: str, role: str, level: str | None = None, json: bool | None = None) -> Any:
    """Configure structlog for this process once and return a logger bound to its identity."""
    global _configured
    level_name = (level or os.environ.get("BOREAL_LOG_LEVEL", "info")).upper()
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(node=node_id, az=az, role=role)
    _configured = True
    return structlog.get_logger()


def get_logger(**bound: Any) -> Any:
    """A logger for library code; identity fields come from configure_logging().

    A lazy proxy: module-level loggers are made at import, before configure_logging()
    runs, and must still use its renderer and level (an eager bind() froze the defaults)."""
    return structlog.get_logger(**bound)
