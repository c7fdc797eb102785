"""The processes of a chaos run: 2 CDC readers, 2 coordinators, N SQL-sink workers
(and, with a second source, one reader of it: `q1`).

Every process is a real `shardctl ... run` subprocess in a cluster (etcd prefix),
topic and databases of the run's own. The sink database lives on `sink_server`
(the source MariaDB, or `mariadb_sink` when the run stops the sink's server), or,
with `sink="postgres"`, in the stack's PostgreSQL (`postgres`).
`Pipeline` starts them, kills (-9), freezes (SIGSTOP) and resumes (SIGCONT) them,
tells who leads, and restarts stack services through the stack handle. `close()`
ends only the processes it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, LoopThread
from shardctl.core.keyspace import Keyspace
from shardctl.core.processes import ProcessGroup
from tests.chaos.flaky_sink import HANDLERS
from tests.chaos.workload import DATA_TABLES, SECOND_SOURCE_TABLES

REPO = Path(__file__).resolve().parents[2]
SOURCE = "src"
SOURCE2 = "src2"
# What a log line of a complaint holds (the structured log marks levels "[warning  ]").
COMPLAINT_MARKS = ("[warning", "[error", "[critical", "Traceback", "WARNING", "ERROR")


def port_of(stack: Any, mariadb: str) -> int:
    """The port of one MariaDB of the devstack (`mariadb`, `mariadb2`, `mariadb_sink`)."""
    return int(stack._stack.mariadb_port(mariadb))


class Pipeline:
    def __init__(
        self,
        stack: Any,
        settings: Settings,
        source_db: str,
        workdir: Path,
        *,
        num_shards: int,
        ttl: int,
        poison_modulus: int,
        flaky_modulus: int,
        sink_server: str = "mariadb",
        second_source: str | None = None,
        max_message_bytes: int | None = None,
        sink: str = "sql",
    ) -> None:
        self.stack = stack
        self.settings = settings
        self.keys = Keyspace.of(settings)
        self.source_db = source_db
        self.sink_db = f"{source_db}_sink"
        self.topic = f"chaos-{source_db}"
        self.dlq = f"{self.topic}.dlq"
        self.reader_dlq = f"{self.topic}.cdc-dlq"
        self.sink_server = sink_server
        self.sink = sink
        self.handler = HANDLERS[sink]
        self.second_source = second_source  # the devstack MariaDB of SOURCE2, if any
        self.max_message_bytes = max_message_bytes
        self.workdir = workdir
        self.num_shards = num_shards
        self.ttl = ttl
        self.handler_options = {
            "poison_table": "accounts",
            "poison_modulus": str(poison_modulus),
            "flaky_modulus": str(flaky_modulus),
            # The verdict needs every version of a row applied: no folding per key.
            "fold_changes": "false",
        }
        self.etcd = LoopThread(f"chaos-etcd-{settings.cluster}").start()
        self.client = self.etcd.run(EtcdClient(settings.etcd).connect())
        include = ", ".join(f"include: {source_db}.{t}" for t in DATA_TABLES)
        self.env = {
            **os.environ,
            **stack.env(),
            "SHARDCTL_CLUSTER": settings.cluster,
            "SHARDCTL_CDC_KAFKA_TOPIC": self.topic,
            "SHARDCTL_CDC_SOURCE": SOURCE,
            # One replica server_id per reader: the server evicts duplicates.
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, {include}",
            "SHARDCTL_CDC_LEASE_TTL_S": str(ttl),
            "SHARDCTL_CDC_DEAD_LETTER_TOPIC": self.reader_dlq,
        }
        if sink == "postgres":
            # Host, port, user and password file come with the stack's environment.
            self.env["SHARDCTL_SINK_POSTGRES_DATABASE"] = self.sink_db
            self.env["SHARDCTL_SINK_POSTGRES_TARGET_SCHEMA"] = "public"
        else:
            self.env["SHARDCTL_SINK_SQL_HOST"] = stack.mysql_host
            self.env["SHARDCTL_SINK_SQL_PORT"] = str(port_of(stack, sink_server))
            self.env["SHARDCTL_SINK_SQL_USER"] = "root"
            self.env["SHARDCTL_SINK_SQL_DATABASE"] = self.sink_db
        self.env.pop("SHARDCTL_SINK_SQL_PASSWORD", None)
        self.env.pop("SHARDCTL_SINK_SQL_PASSWORD_FILE", None)
        self.processes = ProcessGroup(workdir, self.env, cwd=REPO)

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.processes.procs

    # -- setup -----------------------------------------------------------------------

    def create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.stack.kafka_bootstrap})
        limit = {"max.message.bytes": str(self.max_message_bytes)} if self.max_message_bytes else {}
        futures = admin.create_topics(
            [
                NewTopic(self.topic, self.num_shards, 1, config=limit),
                NewTopic(self.dlq, 1, 1),
                # The reader writes a dead letter to its shard's partition.
                NewTopic(self.reader_dlq, self.num_shards, 1),
            ]
        )
        for topic, future in futures.items():
            try:
                future.result(30)
            except Exception as exc:
                raise RuntimeError(f"creating chaos topic {topic}: {exc}") from exc

    def delete_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.stack.kafka_bootstrap})
        for topic, future in admin.delete_topics([self.topic, self.dlq, self.reader_dlq]).items():
            try:
                future.result(30)
            except Exception as exc:  # the report names it; cleanup goes on
                print(f"chaos cleanup: deleting topic {topic}: {exc}", file=sys.stderr)

    def shardctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardctl.cli.main", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def background(self, *args: str) -> subprocess.Popen[str]:
        """A `shardctl` command left running (e.g. a bootstrap that waits); its output,
        stderr included, comes back from `communicate()`."""
        return subprocess.Popen(
            [sys.executable, "-m", "shardctl.cli.main", *args],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # -- processes -------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.shardctl(name, *args, env=env)

    def start_reader(self, name: str) -> None:
        server_id = 10_000 + zlib.crc32(f"{self.settings.cluster}/{name}".encode()) % 2_000_000_000
        env = {**self.env, "SHARDCTL_CDC_SERVER_ID": str(server_id)}
        args = ["cdc", "run", "--reader-id", name, "--num-shards", str(self.num_shards)]
        self.spawn(name, args, env)

    def source2_env(self) -> dict[str, str]:
        assert self.second_source is not None
        include = ", ".join(f"include: {self.source_db}.{t}" for t in SECOND_SOURCE_TABLES)
        return {
            **self.env,
            "SHARDCTL_MYSQL_PORT": str(port_of(self.stack, self.second_source)),
            "SHARDCTL_CDC_SOURCE": SOURCE2,
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, {include}",
        }

    def start_reader2(self, name: str) -> None:
        """A reader of the second source, publishing into the same topic."""
        server_id = 10_000 + zlib.crc32(f"{self.settings.cluster}/{name}".encode()) % 2_000_000_000
        env = {**self.source2_env(), "SHARDCTL_CDC_SERVER_ID": str(server_id)}
        args = ["cdc", "run", "--reader-id", name, "--num-shards", str(self.num_shards)]
        self.spawn(name, args, env)

    def start_coordinator(self, name: str) -> None:
        args = [
            "coordinator",
            "run",
            "--id",
            name,
            "--ttl",
            str(self.ttl),
            "--stabilization",
            "0.3",
        ]
        self.spawn(name, args)

    def start_worker(self, name: str) -> None:
        args = ["worker", "run", "--id", name, "--topic", self.topic, "--handler", self.handler]
        args += ["--ttl", str(self.ttl), "--commit-interval", "0.2"]
        for key, value in self.handler_options.items():
            args += ["--handler-option", f"{key}={value}"]
        self.spawn(name, args)

    def restart(self, name: str) -> None:
        """Start a process again under the same name (after a kill)."""
        starts = {
            "r": self.start_reader,
            "q": self.start_reader2,
            "c": self.start_coordinator,
            "w": self.start_worker,
        }
        starts[name[0]](name)

    def kill9(self, name: str) -> None:
        self.processes.kill9(name)

    def freeze(self, name: str) -> None:
        self.processes.freeze(name)

    def thaw(self, name: str) -> None:
        self.processes.thaw(name)

    def dead(self) -> list[str]:
        """Processes that exited on their own (not killed by the run): each is a finding."""
        return self.processes.exited()

    def names(self, kind: str) -> list[str]:
        return sorted(n for n in self.procs if n.startswith(kind))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.processes.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def complaints(self, per_process: int = 12) -> str:
        """The last warning, error and traceback lines of every process's log: what a
        report shows when a fault did not recover, since the logs die with the run."""
        out: list[str] = []
        for name in sorted(self.procs):
            lines = [
                line
                for line in self.log_tail(name, 200_000).splitlines()
                if any(mark in line for mark in COMPLAINT_MARKS) and "chaos rule" not in line
            ]
            out.append(f"== {name}: {len(lines)} warning/error lines, the last:")
            out += [f"   {line[:400]}" for line in lines[-per_process:]]
        return "\n".join(out)

    # -- etcd views ------------------------------------------------------------------

    def leader(self, key: str) -> str | None:
        kv = self.etcd.run(self.client.get(key), timeout=30)
        return kv.value.decode() if kv is not None else None

    def coordinator_leader(self) -> str | None:
        return self.leader(self.keys.coordinator_leader)

    def cdc_leader(self) -> str | None:
        return self.leader(self.keys.cdc_leader(SOURCE))

    def close(self) -> None:
        self.processes.stop_all(grace_s=0)
        self.etcd.run(self.client.close(), timeout=10)
        self.etcd.stop()
