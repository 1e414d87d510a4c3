"""Connection errors on one line: what a vanished Prefect server raises, logged without traceback.

Prefect logs a lost API connection or websocket with its full traceback, in `uwav serve` and in
the flow-run processes it starts (whose output passes through `uwav serve`'s). Both install
`connection_errors_on_one_line`; other exceptions keep their tracebacks.
"""

from __future__ import annotations

import logging

import httpx
from websockets.exceptions import ConnectionClosed

from uwav.errors import error_line

# What a vanished server raises (a refused or reset connection, a closed websocket).
CONNECTION_ERRORS = (httpx.TransportError, ConnectionClosed, OSError)


class ConnectionErrorOnOneLine(logging.Filter):
    """A record carrying a connection error (the server went away) loses its traceback: the
    error's one-line text is appended instead. Other exceptions keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CONNECTION_ERRORS):
            record.msg, record.args = f"{record.getMessage()} ({error_line(error)})", None
            record.exc_info, record.exc_text = None, None
        return True


def connection_errors_on_one_line() -> None:
    """Filter the handlers Prefect's logging configuration gave this process (the root logger's
    console handler, `prefect._internal`'s own), once."""
    for handler in (*logging.getLogger().handlers, *logging.getLogger("prefect._internal").handlers):
        if not any(isinstance(existing, ConnectionErrorOnOneLine) for existing in handler.filters):
            handler.addFilter(ConnectionErrorOnOneLine())
