"""One configuration model for every shardctl process.

Sources, highest priority first: values passed in code (CLI flags), ``SHARDCTL_*``
environment variables, then a TOML file (``--config`` or ``SHARDCTL_CONFIG``).
Each section reads its own environment prefix, so ``[etcd] endpoints`` in TOML is
``SHARDCTL_ETCD_ENDPOINTS`` in the environment.

Nested tables use ``__`` in the environment: ``[etcd.tls] ca_file`` is
``SHARDCTL_ETCD_TLS__CA_FILE``.

Secrets are ``SecretStr`` and are read from the environment or from a file
(``*_file`` settings); they never come from argv and never print. A secret given in
the environment in either form (value or ``*_FILE``) beats both forms in the TOML
file; within one source the value beats the file.

A TOML table or top-level key that no process reads is refused, naming it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """Invalid configuration. The message names the setting at fault."""


def read_secret(value: SecretStr | None, path: Path | None, name: str) -> SecretStr | None:
    """A secret comes from its env/TOML value, or else from the file named by `<name>_file`."""
    if value is not None or path is None:
        return value
    try:
        return SecretStr(path.read_text().rstrip("\n"))
    except OSError as exc:
        raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from exc


class TLSSettings(BaseModel):
    """Client TLS material: paths only; a key file's contents are never read into settings.

    TLS is on when `ca_file` is set (the server is verified against it, host name
    included). `cert_file` and `key_file` add a client certificate and need `ca_file`:
    a client certificate over a plaintext connection would be ignored silently.
    """

    model_config = {"extra": "forbid"}

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not os.access(path, os.R_OK):
            reason = "no such file" if not path.exists() else "not readable"
            raise ValueError(f"{path}: {reason}")
        return path

    @model_validator(mode="after")
    def _complete(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("tls.ca_file is required with tls.cert_file/tls.key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


class EtcdSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_ETCD_", env_nested_delimiter="__", extra="forbid"
    )
    section: ClassVar[str] = "etcd"

    endpoints: str = Field(default="127.0.0.1:2379", description="host:port[,host:port...]")
    prefix: str = Field(default="/shardctl", description="root of the keyspace")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TLSSettings = TLSSettings()
    timeout_s: float = Field(default=5.0, gt=0, description="per-request deadline")

    @model_validator(mode="after")
    def _secret(self) -> EtcdSettings:
        self.password = read_secret(self.password, self.password_file, "etcd.password")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd.username and etcd.password must be set together")
        return self

    def endpoint_list(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for item in self.endpoints.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not port.isdigit():
                raise ConfigError(f"etcd.endpoints: {item!r} is not host:port")
            out.append((host, int(port)))
        return out


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_KAFKA_", env_nested_delimiter="__", extra="forbid"
    )
    section: ClassVar[str] = "kafka"

    bootstrap_servers: str = "127.0.0.1:9092"
    # librdkafka settings passed through unchanged (security.protocol, sasl.mechanism,
    # sasl.username, ssl.ca.location, ssl.certificate.location, ssl.key.location, ...).
    # Secrets among them belong in the secret settings below, never here.
    options: dict[str, str] = Field(default_factory=dict)
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None

    @model_validator(mode="after")
    def _secret(self) -> KafkaSettings:
        self.sasl_password = read_secret(
            self.sasl_password, self.sasl_password_file, "kafka.sasl_password"
        )
        self.ssl_key_password = read_secret(
            self.ssl_key_password, self.ssl_key_password_file, "kafka.ssl_key_password"
        )
        refuse_secret_options("kafka.options", self.options)
        return self

    def client_config(self) -> dict[str, str]:
        """librdkafka config with the secrets filled in; never log the result."""
        conf = {"bootstrap.servers": self.bootstrap_servers, **self.options}
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


def _is_secret_option(key: str) -> bool:
    """librdkafka properties that carry a secret inline (passwords, PEM keys, secrets)."""
    return (
        "password" in key
        or "secret" in key
        or key.endswith(".key")
        or key in ("ssl.key.pem", "sasl.oauthbearer.config")
    )


def refuse_secret_options(setting: str, options: Mapping[str, str]) -> None:
    """The one rule for every librdkafka option map (`kafka.options`,
    `cdc.kafka_options`): a secret in it would sit in plain config, so it is refused.
    ValueError names the option, never its value."""
    for key in options:
        if _is_secret_option(key):
            raise ValueError(
                f"{setting}.{key}: secrets go in SHARDCTL_KAFKA_SASL_PASSWORD / "
                "SHARDCTL_KAFKA_SSL_KEY_PASSWORD or their *_FILE settings, not in options"
            )


class MySQLSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_MYSQL_", env_nested_delimiter="__", extra="forbid"
    )
    section: ClassVar[str] = "mysql"

    host: str = "127.0.0.1"
    port: int = Field(default=3306, gt=0, lt=65536)
    user: str = "shardctl_cdc"
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TLSSettings = TLSSettings()

    @model_validator(mode="after")
    def _secret(self) -> MySQLSettings:
        self.password = read_secret(self.password, self.password_file, "mysql.password")
        return self

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for PyMySQL.connect; never log the result."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password.get_secret_value() if self.password else "",
        }
        if self.tls.enabled:
            # Required TLS, verifying the certificate and the host name. Without these
            # PyMySQL still tries TLS, but unverified and falling back to plaintext.
            kwargs["ssl_ca"] = str(self.tls.ca_file)
            kwargs["ssl_verify_cert"] = True
            kwargs["ssl_verify_identity"] = True
            if self.tls.cert_file is not None and self.tls.key_file is not None:
                kwargs["ssl_cert"] = str(self.tls.cert_file)
                kwargs["ssl_key"] = str(self.tls.key_file)
        return kwargs


class NSQSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_NSQ_", env_nested_delimiter="__", extra="forbid"
    )
    section: ClassVar[str] = "nsq"

    nsqd_tcp_addresses: str = "127.0.0.1:4150"
    nsqd_http_address: str = "127.0.0.1:4151"


class WorkerSettings(BaseSettings):
    """How `shardctl worker run` runs and consumes. Its flags of the same names beat
    SHARDCTL_WORKER_* in the environment, which beats [worker] in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="SHARDCTL_WORKER_", env_nested_delimiter="__", extra="forbid"
    )
    section: ClassVar[str] = "worker"

    capacity: int = Field(default=1, ge=1, description="relative capacity (weight)")
    ttl: int = Field(default=10, ge=2, description="lease TTL in seconds")
    restart_grace_s: float = Field(
        default=0.0,
        ge=0,
        description="seconds the coordinator keeps a stopped worker's shards for it; 0 = off",
    )
    commit_interval_s: float = Field(
        default=1.0, ge=0.05, description="seconds between fenced offset commits"
    )
    drain_timeout_s: float = Field(
        default=60.0, ge=0, description="seconds of draining before giving up and exiting"
    )
    batch_size: int = Field(default=200, ge=1, description="most events per handler call")
    max_in_flight: int = Field(
        default=1000, ge=1, description="most events read ahead of the handler, per shard"
    )
    retry_attempts: int = Field(
        default=5, ge=1, description="tries of a failing event before it is dead-lettered"
    )
    retry_initial_delay_s: float = Field(
        default=0.2, ge=0, description="wait before the first retry; doubles per retry"
    )
    retry_max_delay_s: float = Field(default=10.0, ge=0, description="longest wait between tries")
    handler_threads: int = Field(
        default=8, ge=1, description="threads that run blocking handlers and sinks"
    )
    dead_letter_template: str = Field(
        default="{topic}.dlq", min_length=1, description="dead-letter topic of {topic}"
    )
    create_dead_letter_topics: bool = Field(
        default=True, description="create missing dead-letter topics at start (Kafka)"
    )
    nsq_channel: str | None = Field(
        default=None, description="NSQ channel (default shardctl.<cluster>)"
    )


SECTIONS: tuple[type[BaseSettings], ...] = (
    EtcdSettings,
    KafkaSettings,
    MySQLSettings,
    NSQSettings,
    WorkerSettings,
)
# Tables of the TOML file read by a process of its own, not by Settings.
PROCESS_SECTIONS: tuple[str, ...] = ("cdc",)  # cdc/options.py
# Top-level settings that are not tables.
TOP_LEVEL_SETTINGS: tuple[str, ...] = ("cluster",)


class Settings(BaseModel):
    """All sections. Process-specific settings live with their process (cdc, workers)."""

    cluster: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    etcd: EtcdSettings
    kafka: KafkaSettings
    mysql: MySQLSettings
    nsq: NSQSettings
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    def etcd_root(self) -> str:
        """The key prefix under which this cluster lives: `<prefix>/<cluster>/`."""
        return f"{self.etcd.prefix.rstrip('/')}/{self.cluster}/"


def _describe(exc: ValidationError, section: str) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        name = f"{section}.{where}" if where else section
        # Never echo the input: it may be a secret.
        problems.append(f"{name}: {err['msg']}")
    return "; ".join(problems)


def config_path(path: Path | None) -> Path | None:
    """The TOML file to read: `path`, else SHARDCTL_CONFIG, else none."""
    if path is None and os.environ.get("SHARDCTL_CONFIG"):
        return Path(os.environ["SHARDCTL_CONFIG"])
    return path


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The whole TOML document (empty without a file); errors name the file."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    _refuse_unknown_sections(document, path)
    return document


def _refuse_unknown_sections(document: dict[str, Any], path: Path) -> None:
    """A misspelt section would be ignored and its process would run on defaults."""
    sections = [cls.section for cls in SECTIONS] + list(PROCESS_SECTIONS)  # type: ignore[attr-defined]
    known = ", ".join(f"[{name}]" for name in sorted(sections))
    for name, value in document.items():
        if name in TOP_LEVEL_SETTINGS:
            continue
        if name not in sections:
            if isinstance(value, dict):
                raise ConfigError(
                    f"config file {path}: unknown section [{name}]; the sections are {known}"
                )
            raise ConfigError(
                f"config file {path}: unknown setting `{name}`; top-level settings are "
                f"{', '.join(TOP_LEVEL_SETTINGS)} and the sections {known}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"config file {path}: `{name}` must be a table ([{name}])")


SectionT = TypeVar("SectionT", bound=BaseSettings)


def _in_environment(name: str) -> bool:
    return name in os.environ or any(var.startswith(f"{name}__") for var in os.environ)


def load_section(
    cls: type[SectionT],
    section: str,
    from_file: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    path: Path | None = None,
) -> SectionT:
    """One settings section: overrides beat SHARDCTL_* env, which beats the file.

    Raises ConfigError naming the first bad setting as `<section>.<name>`.
    """
    unknown = set(from_file) - set(cls.model_fields)
    if unknown:
        raise ConfigError(f"{section}.{sorted(unknown)[0]}: unknown setting in {path}")
    prefix = str(cls.model_config.get("env_prefix", ""))
    # Env must beat the file, so only pass file values the environment does not set.
    # A nested table (e.g. [etcd.tls]) set in the environment (SHARDCTL_ETCD_TLS__CA_FILE)
    # is taken from the environment as a whole.
    init = {k: v for k, v in from_file.items() if not _in_environment(f"{prefix}{k}".upper())}
    # A secret and its `<name>_file` are one setting in two forms: either form in the
    # environment beats both forms in the file.
    for name in cls.model_fields:
        file_form = f"{name}_file"
        if file_form in cls.model_fields and any(
            _in_environment(f"{prefix}{n}".upper()) for n in (name, file_form)
        ):
            init.pop(name, None)
            init.pop(file_form, None)
    init.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls(**init)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, section)) from None


def load_settings(
    path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    cluster: str | None = None,
) -> Settings:
    """Build Settings from a TOML file, the environment and explicit overrides.

    Raises ConfigError naming the first bad setting; the process should exit on it.
    """
    path = config_path(path)
    file_values = read_config_file(path)
    overrides = overrides or {}
    built: dict[str, Any] = {}
    for cls in SECTIONS:
        section: str = cls.section  # type: ignore[attr-defined]
        built[section] = load_section(
            cls, section, file_values.get(section, {}), overrides.get(section), path
        )
    try:
        return Settings(
            cluster=cluster
            or os.environ.get("SHARDCTL_CLUSTER")
            or file_values.get("cluster", "default"),
            **built,
        )
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "settings")) from None
