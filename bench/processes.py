"""What the end-to-end benchmarks share: the local stack's settings, shardctl processes
started as subprocesses, unique names, and cleanup of everything they created.

Not a benchmark itself; `bench/latency.py` and `bench/rebalance_pause.py` import it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shardctl.cli.dev import load_devstack  # noqa: E402
from shardctl.core.config import Settings, load_settings  # noqa: E402
from shardctl.core.etcd import EtcdClient  # noqa: E402
from shardctl.core.keyspace import Keyspace  # noqa: E402
from shardctl.core.processes import SHARDCTL, ProcessGroup  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Bench:
    """One benchmark run: a unique cluster, its processes, topics and databases."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.stack = load_devstack().Stack()
        self.token = uuid.uuid4().hex[:8]
        self.cluster = f"bench-{name}-{self.token}"
        self.workdir = workdir
        self.bootstrap = f"127.0.0.1:{self.stack.ports.kafka}"
        self.mysql_port = int(self.stack.ports.mariadb)
        self.env: dict[str, str] = {
            **os.environ,
            **self.stack.env(),
            "SHARDCTL_CLUSTER": self.cluster,
            # The handler classes of the benchmarks live in bench/.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)]),
        }
        self.processes = ProcessGroup(workdir, self.env, cwd=ROOT)
        self.topics: list[str] = []

    def settings(self) -> Settings:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return load_settings(cluster=self.cluster)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def shardctl(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start `shardctl <args>` in the background; its output goes to <name>.log."""
        self.processes.shardctl(name, *args, env=env)

    def python(self, name: str, *args: str) -> None:
        """Start a Python process in the background; its output goes to <name>.log."""
        self.processes.start(name, [sys.executable, *args])

    def run_shardctl(self, *args: str) -> None:
        done = subprocess.run(
            [*SHARDCTL, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"shardctl {' '.join(args)} failed: {done.stderr.strip()}")

    def create_topic(self, topic: str, partitions: int) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
            topic
        ].result(30)
        self.topics.append(topic)

    def alive(self, name: str) -> bool:
        return self.processes.alive(name)

    def signal(self, name: str, sig: int) -> None:
        self.processes.signal(name, sig)

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def close(self, extra_topics: list[str] | None = None) -> None:
        self.processes.stop_all(grace_s=15)
        topics = self.topics + (extra_topics or [])
        if topics:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            existing = set(admin.list_topics(timeout=10).topics)
            names = [t for t in topics if t in existing]
            if names:
                for future in admin.delete_topics(names).values():
                    future.result(30)
        asyncio.run(self._delete_prefix())

    async def _delete_prefix(self) -> None:
        settings = self.settings()
        async with EtcdClient(settings.etcd) as client:
            await client.delete_prefix(Keyspace.of(settings).root)


def read_lines(path: Path) -> list[list[Any]]:
    """Whitespace-separated fields of each complete line of `path` ([] if absent)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the last one may be half written
    return [line.split() for line in lines if line]
