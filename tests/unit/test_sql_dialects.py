"""The SQL sinks' dialects and settings: one upsert per dialect, TLS as connection
arguments, secrets never from options."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.core.config import ConfigError
from workers.handlers import BUILTIN_SINKS, HandlerContext, resolve_spec
from workers.sinks.postgres import PostgresDialect, PostgresSink, PostgresSinkSettings
from workers.sinks.postgres import connect_kwargs as pg_connect_kwargs
from workers.sinks.postgres import quote as pg_quote
from workers.sinks.sql import MariaDBDialect, SqlSink


def test_the_fence_upsert_keeps_the_greater_token_in_both_dialects() -> None:
    columns, keys = ("scope", "shard", "token"), ("scope", "shard")
    assert MariaDBDialect().upsert("shardctl_fences", columns, keys, (), greatest=("token",)) == (
        "INSERT INTO shardctl_fences (`scope`, `shard`, `token`) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE `token` = GREATEST(`token`, VALUES(`token`))"
    )
    assert PostgresDialect().upsert("shardctl_fences", columns, keys, (), greatest=("token",)) == (
        'INSERT INTO shardctl_fences ("scope", "shard", "token") VALUES (%s, %s, %s) '
        'ON CONFLICT ("scope", "shard") DO UPDATE SET '
        '"token" = GREATEST(shardctl_fences."token", EXCLUDED."token")'
    )


def test_a_postgres_row_upsert_conflicts_on_the_primary_key() -> None:
    sql = PostgresDialect().upsert('"s"."t"', ["id", "k2", "name"], ["id", "k2"], ["name"])
    assert sql == (
        'INSERT INTO "s"."t" ("id", "k2", "name") VALUES (%s, %s, %s) '
        'ON CONFLICT ("id", "k2") DO UPDATE SET "name" = EXCLUDED."name"'
    )


@given(st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s))
def test_a_quoted_postgres_name_holds_its_quotes_doubled(name: str) -> None:
    quoted = pg_quote(name)
    assert quoted.startswith('"') and quoted.endswith('"')
    assert quoted[1:-1].replace('""', '"') == name
    assert '"' not in quoted[1:-1].replace('""', "")


def _certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    files = tuple(tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for f in files:
        f.write_text("x")
    return files  # type: ignore[return-value]


def test_postgres_tls_is_required_and_verified_with_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _certs(tmp_path)
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_TLS__CA_FILE", str(ca))
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_TLS__CERT_FILE", str(cert))
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_TLS__KEY_FILE", str(key))
    kwargs = pg_connect_kwargs(PostgresSinkSettings())
    assert kwargs["sslmode"] == "verify-full"
    assert (kwargs["sslrootcert"], kwargs["sslcert"], kwargs["sslkey"]) == tuple(
        map(str, (ca, cert, key))
    )


def test_without_a_ca_the_postgres_sink_sets_no_tls_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CA_FILE", "CERT_FILE", "KEY_FILE"):
        monkeypatch.delenv(f"SHARDCTL_SINK_POSTGRES_TLS__{name}", raising=False)
    kwargs = pg_connect_kwargs(PostgresSinkSettings())
    assert not {"sslmode", "sslrootcert", "sslcert", "sslkey"} & set(kwargs)


@pytest.mark.parametrize(
    ("sink", "env"),
    [(SqlSink, "SHARDCTL_SINK_SQL_PASSWORD"), (PostgresSink, "SHARDCTL_SINK_POSTGRES_PASSWORD")],
)
@pytest.mark.parametrize("option", ["password", "password_file"])
def test_a_password_given_as_an_option_is_refused(
    sink: type[SqlSink], env: str, option: str
) -> None:
    with pytest.raises(ConfigError, match=f"{env} or {env}_FILE, never as an option"):
        sink(HandlerContext(options={option: "secret"}))


def test_the_postgres_password_file_is_read_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("SHARDCTL_SINK_POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("SHARDCTL_SINK_POSTGRES_PASSWORD_FILE", str(secret))
    settings = PostgresSinkSettings()
    assert pg_connect_kwargs(settings)["password"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_postgres_is_a_built_in_sink() -> None:
    assert resolve_spec("postgres") is PostgresSink
    assert "postgres" in BUILTIN_SINKS


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("08006", True),  # connection_failure
        ("08001", True),  # unable to establish a connection
        ("57P01", True),  # admin_shutdown: the server is restarting
        ("40P01", True),  # deadlock_detected
        ("55P03", True),  # lock_not_available
        ("23505", False),  # unique_violation: the data's fault
        ("22P02", False),  # invalid_text_representation
        ("42703", False),  # undefined_column
    ],
)
def test_postgres_errors_are_transient_only_when_waiting_cures_them(
    sqlstate: str, transient: bool
) -> None:
    import psycopg.errors

    error = psycopg.errors.lookup(sqlstate)("from the server")
    assert PostgresDialect().is_transient(error) is transient


def test_a_postgres_connection_that_never_answered_is_transient() -> None:
    import psycopg

    assert PostgresDialect().is_transient(psycopg.OperationalError("connection refused"))
    assert PostgresDialect().is_transient(ConnectionRefusedError())
    assert not PostgresDialect().is_transient(ValueError("not a driver error"))


def test_both_dialects_classify_what_their_driver_raises() -> None:
    import pymysql

    mariadb = MariaDBDialect()
    assert mariadb.is_transient(pymysql.err.OperationalError(2013, "Lost connection"))
    assert not mariadb.is_transient(pymysql.err.IntegrityError(1062, "Duplicate entry"))
