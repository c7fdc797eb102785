"""Security settings without servers: Kafka SASL/SSL pass-through, TLS settings that
are checked at start, MySQL TLS arguments, and no credential option on any command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
from confluent_kafka import Producer
from pydantic import SecretStr

from shardctl.cli.main import app
from shardctl.core.config import (
    ConfigError,
    KafkaSettings,
    MySQLSettings,
    TLSSettings,
    load_settings,
)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(text)
    return path


def _pem(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("not parsed by the settings, only checked to be readable\n")
    return path


def test_kafka_sasl_ssl_options_pass_through_with_the_password_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _pem(tmp_path, "ca.pem")
    secret = tmp_path / "sasl"
    secret.write_text("sasl-very-secret\n")
    key_secret = tmp_path / "keypw"
    key_secret.write_text("key-very-secret\n")
    path = _toml(
        tmp_path,
        "[kafka]\n"
        'bootstrap_servers = "broker:9093"\n'
        f'sasl_password_file = "{secret}"\n'
        "[kafka.options]\n"
        '"security.protocol" = "SASL_SSL"\n'
        '"sasl.mechanism" = "SCRAM-SHA-512"\n'
        '"sasl.username" = "cdc"\n'
        f'"ssl.ca.location" = "{ca}"\n',
    )
    monkeypatch.setenv("SHARDCTL_KAFKA_SSL_KEY_PASSWORD_FILE", str(key_secret))
    settings = load_settings(path)
    assert settings.kafka.client_config() == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "cdc",
        "ssl.ca.location": str(ca),
        "sasl.password": "sasl-very-secret",
        "ssl.key.password": "key-very-secret",
    }
    shown = repr(settings) + str(settings.model_dump())
    assert "sasl-very-secret" not in shown and "key-very-secret" not in shown


def test_librdkafka_accepts_the_passed_through_config() -> None:
    # Property names and values are librdkafka's own: a client builds from them.
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        options={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "cdc",
        },
        sasl_password=SecretStr("pw"),
    )
    producer = Producer(kafka.client_config())
    assert producer.flush(0) == 0


def test_kafka_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_KAFKA_OPTIONS", '{"security.protocol": "SSL"}')
    monkeypatch.setenv("SHARDCTL_KAFKA_SASL_PASSWORD", "env-secret")
    config = load_settings().kafka.client_config()
    assert config["security.protocol"] == "SSL"
    assert config["sasl.password"] == "env-secret"


@pytest.mark.parametrize(
    "option",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
    ],
)
def test_secrets_are_refused_in_kafka_options(tmp_path: Path, option: str) -> None:
    path = _toml(tmp_path, f'[kafka.options]\n"{option}" = "leaked-value"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"kafka.options.{option}" in str(err.value)
    assert "leaked-value" not in str(err.value)


def test_tls_files_are_checked_at_start_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDCTL_ETCD_TLS__CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"etcd\.tls\.ca_file: .*missing\.pem: no such file"):
        load_settings()


def test_a_client_certificate_needs_its_key_and_a_ca(tmp_path: Path) -> None:
    cert, key, ca = (_pem(tmp_path, n) for n in ("c.pem", "c.key", "ca.pem"))
    with pytest.raises(ValueError, match=r"cert_file and tls\.key_file must be set together"):
        TLSSettings(ca_file=ca, cert_file=cert)
    with pytest.raises(ValueError, match=r"tls\.ca_file is required"):
        TLSSettings(cert_file=cert, key_file=key)
    path = _toml(tmp_path, f'[mysql.tls]\ncert_file = "{cert}"\n')
    with pytest.raises(ConfigError, match=r"^mysql\.tls: "):
        load_settings(path)


def test_mysql_tls_is_required_and_verified(tmp_path: Path) -> None:
    cert, key, ca = (_pem(tmp_path, n) for n in ("c.pem", "c.key", "ca.pem"))
    kwargs = MySQLSettings(
        tls=TLSSettings(ca_file=ca, cert_file=cert, key_file=key)
    ).connect_kwargs()
    assert kwargs["ssl_ca"] == str(ca)
    assert kwargs["ssl_cert"] == str(cert) and kwargs["ssl_key"] == str(key)
    assert kwargs["ssl_verify_cert"] is True and kwargs["ssl_verify_identity"] is True
    assert not any(k.startswith("ssl") for k in MySQLSettings().connect_kwargs())


def _commands(command: Any, path: str = "shardctl") -> list[tuple[str, Any]]:
    """Every command of the app; groups carry their subcommands in `.commands`."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_no_command_takes_a_credential_on_the_command_line() -> None:
    commands = _commands(typer.main.get_command(app))
    assert len(commands) > 10, "the walk must reach the subcommands"
    offending = [
        f"{path}: {' / '.join(param.opts) or param.name}"
        for path, command in commands
        for param in command.params
        if any(
            word in " ".join([param.name or "", *param.opts]).lower()
            for word in ("password", "passwd", "secret", "credential")
        )
    ]
    assert offending == [], "credentials come from the environment or files only"
