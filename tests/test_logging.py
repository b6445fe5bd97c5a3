"""Server processes log JSON lines when asked (what `shardwise up` asks)."""

from __future__ import annotations

import json
import logging

from shardwise.service import JsonLogFormatter


def test_a_log_record_becomes_one_json_object() -> None:
    formatter = JsonLogFormatter("127.0.0.1:7201")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys  # noqa: PLC0415

        record = logging.LogRecord(
            "shardwise.x", logging.ERROR, __file__, 1, "a %s", ("b",), sys.exc_info()
        )
    line = formatter.format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "ERROR" and entry["message"] == "a b"
    assert entry["node"] == "127.0.0.1:7201" and entry["logger"] == "shardwise.x"
    assert "ValueError: boom" in entry["exception"]
