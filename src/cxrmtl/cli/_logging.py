"""Logging for the command line: library code logs through ``logging``; the CLI decides where it goes.

``configure_logging`` sends the ``cxrmtl`` loggers to stderr (stdout stays for results a user may pipe): INFO lines
as they are (the epoch lines of training, what a command decided and why), warnings and errors prefixed.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "cxrmtl-cli"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners and notebooks swap it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def configure_logging(verbose: bool = False) -> None:
    """Route ``cxrmtl.*`` log records to stderr at INFO (DEBUG when ``verbose``); calling it again changes nothing."""
    logger = logging.getLogger("cxrmtl")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Format("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False  # one copy of each line even when an application configured the root logger
