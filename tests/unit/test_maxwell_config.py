"""`shardctl cdc config from-maxwell`: Maxwell's config.properties to our TOML.

Maxwell's settings and their meaning follow Maxwell's configuration reference
(docs/docs/config.md: host, port, user, password, producer, kafka_topic,
filter, producer_partition_by, output_*, and `kafka.*` passed to the Kafka
client); .properties syntax follows java.util.Properties.load.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.maxwell_config import parse_properties, to_toml, translate
from cdc.options import CdcOptions, load_cdc_options
from shardctl.core.config import load_settings

CDC_OPTIONS = frozenset(CdcOptions.model_fields)

MAXWELL_CONFIG = r"""
# tl;dr config
log_level=info
producer=kafka
kafka.bootstrap.servers=kafka1:9092,kafka2:9092

# mysql login info
host=db.internal
port=3307
user=maxwell
password=s3cret-Pass

kafka_topic=maxwell_%{database}_%{table}
filter=exclude: *.*, \
       include: shop.*
producer_partition_by=column
producer_partition_columns=user_id, id
producer_partition_by_fallback=table
output_ddl=true
output_binlog_position=TRUE
output_nulls=true
kafka.compression.type=snappy
kafka.security.protocol=SASL_SSL
kafka.sasl.mechanism=PLAIN
kafka.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
  required username="mx" password="hunter2-kafka";
kafka.acks=1
kafka.key.serializer=org.apache.kafka.common.serialization.StringSerializer
client_id=maxwell-a
replica_server_id=6379
schema_database=maxwell
"""


def translated() -> tuple[dict[str, object], dict[str, str], str]:
    translation = translate(parse_properties(MAXWELL_CONFIG), CDC_OPTIONS)
    text = to_toml(translation, "config.properties")
    return tomllib.loads(text), dict(translation.not_carried), text


def test_properties_syntax() -> None:
    text = "# comment\n! also\n a = 1\nb:2\nc 3\nd=x\\\n   y\ne=\\u00e9\\tz\na=last\n"
    assert parse_properties(text) == {"a": "last", "b": "2", "c": "3", "d": "xy", "e": "é\tz"}


def test_carried_settings_keep_their_meaning() -> None:
    toml, _, _ = translated()
    assert toml["mysql"] == {"host": "db.internal", "port": 3307, "user": "maxwell"}
    assert toml["kafka"] == {
        "bootstrap_servers": "kafka1:9092,kafka2:9092",
        "options": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
    }
    assert toml["cdc"] == {
        "producer": "kafka",
        "kafka_topic": "maxwell_%{database}_%{table}",
        "filter": "exclude: *.*, include: shop.*",
        "producer_partition_by": "column",
        "producer_partition_columns": ["user_id", "id"],
        "producer_partition_by_fallback": "table",
        "output_ddl": True,
        "output_binlog_position": True,
        "kafka_options": {"compression.type": "snappy"},
        # Maxwell's default hash, written out (shardctl's own default is crc32).
        "kafka_partition_hash": "default",
    }


def test_every_setting_not_carried_is_listed_with_a_reason() -> None:
    _, skipped, text = translated()
    assert set(skipped) == {
        "log_level",
        "password",
        "output_nulls",
        "kafka.sasl.jaas.config",
        "kafka.acks",
        "kafka.key.serializer",
        "client_id",
        "replica_server_id",
        "schema_database",
    }
    assert "SHARDCTL_MYSQL_PASSWORD" in skipped["password"]
    assert "server_id" in skipped["replica_server_id"]
    assert "import-maxwell" in skipped["client_id"]
    assert "acks=all" in skipped["kafka.acks"]
    assert "no cdc.output_nulls option" in skipped["output_nulls"]
    for name, why in skipped.items():
        assert f"#   {name}: {why}" in text


def test_passwords_never_reach_the_output() -> None:
    _, _, text = translated()
    assert "s3cret-Pass" not in text
    assert "hunter2-kafka" not in text


@given(
    secret=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1
    ).filter(lambda s: "\\" not in s)
)
def test_no_secret_value_is_ever_copied(secret: str) -> None:
    # Marked, so that the check cannot match the output's own text by chance.
    secret = f"\u27e6{secret}\u27e7"
    props = {
        "password": secret,
        "replication_password": secret,
        "kafka.sasl.jaas.config": f'x password="{secret}";',
        "kafka.ssl.keystore.password": secret,
        "kafka.ssl.key.password": secret,
        "host": "db",
    }
    text = to_toml(translate(props, CDC_OPTIONS))
    assert secret not in text


def test_replication_host_is_the_one_to_read_from() -> None:
    props = {"host": "schema-db", "replication_host": "binlog-db", "replication_port": "3310"}
    translation = translate(props, CDC_OPTIONS)
    assert translation.sections["mysql"] == {"host": "binlog-db", "port": 3310}
    assert "host" in dict(translation.not_carried)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("producer", "kinesis", "Kafka, NSQ or stdout"),
        ("producer_partition_by", "random", "no partitioning by 'random'"),
        ("output_ddl", "yes", "not true or false"),
        ("port", "abc", "not a port number"),
        ("some_future_setting", "1", "not a setting shardctl has"),
    ],
)
def test_values_shardctl_cannot_take_are_listed(name: str, value: str, reason: str) -> None:
    translation = translate({name: value}, CDC_OPTIONS)
    assert reason in dict(translation.not_carried)[name]
    assert translation.sections == {}


def test_an_option_is_carried_only_when_shardctl_has_it() -> None:
    props = {"output_commit_info": "false"}
    assert translate(props, CDC_OPTIONS | {"output_commit_info"}).sections == {
        "cdc": {"output_commit_info": False}
    }
    without = translate(props, CDC_OPTIONS - {"output_commit_info"})
    assert "output_commit_info" in dict(without.not_carried)


def test_the_output_is_a_valid_shardctl_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("SHARDCTL_"):
            monkeypatch.delenv(name)
    _, _, text = translated()
    path = tmp_path / "shardctl.toml"
    path.write_text(text)
    options = load_cdc_options(path)
    assert options.kafka_topic == "maxwell_%{database}_%{table}"
    assert options.producer_partition_columns == ["user_id", "id"]
    settings = load_settings(path)
    assert settings.mysql.host == "db.internal" and settings.mysql.port == 3307
    assert settings.mysql.password is None


def test_kafka_partitions_follow_maxwells_defaults() -> None:
    # Maxwell's config reference: kafka_partition_hash [default | murmur3], default
    # "default"; producer_partition_by default "database".
    plain = translate({"producer": "kafka"}, CDC_OPTIONS).sections["cdc"]
    assert plain["kafka_partition_hash"] == "default"
    assert plain["producer_partition_by"] == "database"
    murmur = translate(
        {"producer": "kafka", "kafka_partition_hash": "murmur3", "producer_partition_by": "table"},
        CDC_OPTIONS,
    ).sections["cdc"]
    assert murmur["kafka_partition_hash"] == "murmur3"
    assert murmur["producer_partition_by"] == "table"
    # Not a Kafka producer: nothing to place on partitions.
    stdout = translate({"producer": "stdout"}, CDC_OPTIONS).sections.get("cdc", {})
    assert "kafka_partition_hash" not in stdout
