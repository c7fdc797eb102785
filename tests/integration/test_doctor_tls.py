"""`shardctl doctor` reports on the TLS files of the settings, from a real process:
a certificate about to expire is a warning, a file that is missing a problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shardctl.cli.dev import load_devstack
from tests.conftest import StackHandle

pytestmark = pytest.mark.integration


def tls_findings(env: dict[str, str]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "doctor", "--json", "--sample", "0"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return [f for f in json.loads(result.stdout) if f["check"] == "tls"]


def test_doctor_reads_the_certificates_of_the_settings(
    stack: StackHandle, unique: str, tmp_path: Path
) -> None:
    certs = load_devstack().Certificates.generate(tmp_path / "certs")
    base = {**os.environ, **stack.env(), "SHARDCTL_CLUSTER": unique}
    assert tls_findings(base) == []

    env = {
        **base,
        "SHARDCTL_MYSQL_TLS__CA_FILE": str(certs.ca),
        "SHARDCTL_MYSQL_TLS__CERT_FILE": str(certs.client_cert),
        "SHARDCTL_MYSQL_TLS__KEY_FILE": str(certs.client_key),
        "SHARDCTL_KAFKA_OPTIONS": json.dumps({"ssl.ca.location": str(tmp_path / "gone.pem")}),
    }
    found = {f["what"].split(":")[0]: f for f in tls_findings(env)}
    assert sorted(found) == [
        "kafka.options.ssl.ca.location",
        "mysql.tls.ca_file",
        "mysql.tls.cert_file",
        "mysql.tls.key_file",
    ]
    assert found["mysql.tls.ca_file"]["level"] == "warning"
    assert "expires on" in found["mysql.tls.ca_file"]["what"]
    assert found["mysql.tls.cert_file"]["level"] == "warning"
    assert found["mysql.tls.key_file"]["level"] == "ok"
    assert found["kafka.options.ssl.ca.location"]["level"] == "problem"
