"""Log output: one JSON object per line for mailgate's and the standard library's loggers alike, and no
per-command chatter from the libraries underneath."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from mailgate.observability.logging import configure_logging, get_logger, request_id_var


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """configure_logging binds the captured stderr: later tests must not write to it."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


def test_own_and_stdlib_lines_are_json_and_library_chatter_is_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    token = request_id_var.set("req-1")
    try:
        get_logger("mailgate.test").info("accepted", message_id="m1")
        get_logger("mailgate.test").debug("not at info")
        logging.getLogger("uvicorn.error").warning("port %d busy", 8025)
        logging.getLogger("mail.log").info("%r MAIL FROM:<a@b>", ("127.0.0.1", 1))  # aiosmtpd, per command
    finally:
        request_id_var.reset(token)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["event"], line["level"]) for line in lines] == [
        ("mailgate.test", "accepted", "info"),
        ("uvicorn.error", "port 8025 busy", "warning"),
    ]
    assert lines[0]["message_id"] == "m1" and all(line["request_id"] == "req-1" for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_a_logger_made_before_configuration_follows_it(capsys: pytest.CaptureFixture[str]) -> None:
    early = get_logger("mailgate.early")  # as modules do at import, before `serve` configures logging
    configure_logging("json", "warning")
    early.info("below the level")
    early.warning("shown", n=1)
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = [json.loads(x) for x in captured.err.splitlines()]
    assert (line["logger"], line["event"], line["level"], line["n"]) == ("mailgate.early", "shown", "warning", 1)
