"""Log lines are structured, carry their fields, and never carry a secret."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import SecretStr

from shardctl.core import logs


def test_json_lines_carry_extra_fields_and_redact_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json=True)
    logging.getLogger("workers.ownership").info(
        "shard acquired",
        extra={"shard": 7, "token": 1234, "password": "hunter2", "dsn_secret": SecretStr("abc")},
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "shard acquired"
    assert line["shard"] == 7 and line["token"] == 1234
    assert line["level"] == "info" and line["logger"] == "workers.ownership"
    assert line["password"] == "[redacted]" and line["dsn_secret"] == "[redacted]"
    assert "hunter2" not in json.dumps(line)


def test_console_rendering_includes_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json=False)
    logging.getLogger("coordinator").warning("leader changed", extra={"leader": "c-2"})
    err = capsys.readouterr().err
    assert "leader changed" in err and "leader=c-2" in err
