import json
import logging

from core import logs


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("teleconsult.x", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_ids_and_request_id() -> None:
    token = logs.request_id.set("req-1")
    try:
        line = logs.JsonFormatter().format(record("consultation ended", consultation_id="c-42"))
    finally:
        logs.request_id.reset(token)
    body = json.loads(line)
    assert body["msg"] == "consultation ended" and body["level"] == "info"
    assert body["consultation_id"] == "c-42" and body["request_id"] == "req-1"
    assert "\n" not in line


def test_text_lines_are_readable() -> None:
    line = logs.TextFormatter().format(record("room closed", room="r-1"))
    assert "I teleconsult.x: room closed" in line and "room=r-1" in line


def test_configure_installs_one_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("json", "DEBUG")
        logs.configure("json", "DEBUG")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert logging.getLogger("aioice").level == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
