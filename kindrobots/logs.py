"""Process-wide logging: redaction on every record, JSON lines in production."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from kindrobots.config import Settings
from kindrobots.security import redaction


def configure_logging(settings: Settings) -> None:
    redaction.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redaction.RedactingFilter())
    if settings.json_logs:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Alembic announces each of its plugins at INFO on every start; the upgrades stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
