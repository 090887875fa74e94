"""JSON log lines: one object per line, with the service, the request id and the trace.

BentoML sets up its servers' logging (one handler for its own loggers, uvicorn's, circus's and
the root) before it imports a service; with ``observability.logs.format: json`` the service
module then gives those handlers this formatter, so every line a worker writes (access lines
included) can be shipped to a log store and joined with the request's record and trace.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from opentelemetry import trace

from bentochain.observability.context import request_id

BENTOML_LOGGERS = ("", "bentoml", "uvicorn.error", "circus")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from bentoml._internal.context import server_context

        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": server_context.service_name,
            "worker": server_context.worker_index,
            "message": record.getMessage(),
        }
        current = request_id()
        if current:
            entry["request_id"] = current
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def use_json_logs() -> None:
    """Every handler of BentoML's server loggers writes JSON lines from now on."""
    formatter = JsonFormatter()
    for name in BENTOML_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
