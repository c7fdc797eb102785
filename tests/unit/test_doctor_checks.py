"""doctor's rules: binlog retention (which server variable counts, and when the
checkpoint's age uses it up), lag and dead letters between two samples, and the TLS
files (readable; certificates read from real PEM files, expiring or expired)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shardctl.cli.dev import load_devstack
from shardctl.cli.doctor import (
    FlowSample,
    binlog_retention_s,
    certificate_expiries,
    flow_findings,
    retention_finding,
    tls_finding,
)


@pytest.mark.parametrize(
    ("variables", "seconds"),
    [
        ({"binlog_expire_logs_seconds": "3600", "expire_logs_days": "7"}, 3600.0),
        ({"binlog_expire_logs_seconds": "0", "expire_logs_days": "2"}, 172800.0),
        ({"expire_logs_days": "0.5"}, 43200.0),
        ({"binlog_expire_logs_seconds": "0", "expire_logs_days": "0"}, 0.0),
        ({}, 0.0),
    ],
)
def test_the_retention_comes_from_seconds_else_days(
    variables: dict[str, str | None], seconds: float
) -> None:
    assert binlog_retention_s(variables) == seconds


@pytest.mark.parametrize(
    ("age", "retention", "level"),
    [
        (10.0, 0.0, "ok"),  # never purged by age
        (1e9, 0.0, "ok"),
        (0.0, 3600.0, "ok"),
        (1799.0, 3600.0, "ok"),
        (1800.0, 3600.0, "warning"),
        (3599.0, 3600.0, "warning"),
        (3600.0, 3600.0, "problem"),
        (90000.0, 3600.0, "problem"),
    ],
)
def test_the_checkpoint_age_against_the_retention(age: float, retention: float, level: str) -> None:
    finding = retention_finding("orders", age, retention)
    assert finding.level == level
    assert finding.what.startswith("source orders: ")
    assert (finding.fix != "") == (level != "ok")


def test_a_growing_lag_is_a_warning_and_a_steady_one_is_not() -> None:
    first = FlowSample(lag={"a": 10, "b": 50}, dead_letters={})
    second = FlowSample(lag={"a": 10, "b": 80}, dead_letters={})
    found = flow_findings(first, second, 2.0)
    assert [(f.check, f.level) for f in found] == [("lag", "ok"), ("lag", "warning")]
    assert found[1].what == "topic b: the lag grew from 50 to 80 in 2 s"


def test_dead_letters_written_during_the_sample_are_a_problem() -> None:
    first = FlowSample(lag={}, dead_letters={"a.dlq": 0, "b.dlq": 4, "c.dlq": 7})
    second = FlowSample(lag={}, dead_letters={"a.dlq": 0, "b.dlq": 4, "c.dlq": 9})
    found = flow_findings(first, second, 3.0)
    assert [f.level for f in found] == ["ok", "warning", "problem"]
    assert found[2].what.startswith("c.dlq: 2 dead letter(s) in 3 s (9 in all)")
    assert "shardctl tail c.dlq --from-beginning" in found[2].fix


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real CA and client certificate, valid for 2 days (openssl)."""
    return load_devstack().Certificates.generate(tmp_path_factory.mktemp("certs"))


def test_the_expiry_of_every_certificate_of_a_pem_file(certs: Any, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    (ca_expiry,) = certificate_expiries(certs.ca.read_bytes())
    assert now + timedelta(days=1) < ca_expiry <= now + timedelta(days=2, minutes=5)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs.ca.read_bytes() + certs.client_cert.read_bytes())
    assert len(certificate_expiries(bundle.read_bytes())) == 2
    with pytest.raises(ValueError, match="no PEM certificate"):
        certificate_expiries(certs.client_key.read_bytes())


def test_a_certificate_is_ok_then_expiring_then_expired(certs: Any) -> None:
    (expiry,) = certificate_expiries(certs.ca.read_bytes())
    levels = [
        tls_finding("etcd.tls.ca_file", certs.ca, True, expiry - timedelta(days=days)).level
        for days in (30, 14, 1, 0, -1)
    ]
    assert levels == ["ok", "warning", "warning", "problem", "problem"]
    expired = tls_finding("etcd.tls.ca_file", certs.ca, True, expiry + timedelta(seconds=1))
    assert expired.what == f"etcd.tls.ca_file: {certs.ca} expired on {expiry:%Y-%m-%d %H:%M} UTC"


def test_a_key_file_is_only_read_and_a_missing_file_is_a_problem(
    certs: Any, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    assert tls_finding("mysql.tls.key_file", certs.client_key, False, now).level == "ok"
    missing = tls_finding("kafka.options.ssl.ca.location", tmp_path / "nope.pem", True, now)
    assert missing.level == "problem"
    assert missing.what.startswith("kafka.options.ssl.ca.location: cannot read ")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert tls_finding("etcd.tls.ca_file", garbage, True, now).level == "problem"
