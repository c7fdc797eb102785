"""The shipped deploy files start: every shardctl container of the compose file and of
the Kubernetes manifests runs here as a local process, with its own command, args
and environment, and becomes ready on /readyz and does its work. A command or an
environment variable the CLI rejects fails the test (no container engine runs here).

What is substituted, and only that: the endpoints and credentials become the local
stack's (its etcd has no auth, so the etcd user and password file are left out; the
CDC password file is a file with the local password); the cluster, the topics and
the reader's server id are the test's own; each process gets a free metrics port;
the replication factor and min.insync.replicas become 1 (one local broker); the pod
name becomes a worker id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardctl.cli.read_model import read_status
from shardctl.core.config import Settings
from shardctl.core.status import ClusterStatus
from tests.conftest import StackHandle
from tests.integration.workers_support import delete_cluster, delete_topics
from tests.polling import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
ENTRYPOINT = [sys.executable, "-m", "shardctl.cli.main"]  # the image's `shardctl`
ENDPOINTS = (
    "SHARDCTL_ETCD_ENDPOINTS",
    "SHARDCTL_KAFKA_BOOTSTRAP_SERVERS",
    "SHARDCTL_MYSQL_HOST",
    "SHARDCTL_MYSQL_PORT",
    "SHARDCTL_MYSQL_USER",
    "SHARDCTL_NSQ_NSQD_TCP_ADDRESSES",
    "SHARDCTL_NSQ_NSQD_HTTP_ADDRESS",
)
LOCAL_ETCD_HAS_NO_AUTH = ("SHARDCTL_ETCD_USERNAME", "SHARDCTL_ETCD_PASSWORD_FILE")


@dataclass
class Container:
    """One shardctl container of a deploy file: what the image's entrypoint gets."""

    where: str  # e.g. "compose service worker", "k8s Deployment shardctl-worker"
    args: list[str]
    env: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)  # env from the pod (fieldRef)


def compose_containers() -> list[Container]:
    document = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) included
    found = []
    for name, service in document["services"].items():
        if str(service.get("image", "")).startswith("shardctl"):
            found.append(
                Container(
                    f"compose service {name}",
                    [str(a) for a in service["command"]],
                    {k: str(v) for k, v in service.get("environment", {}).items()},
                )
            )
    return found


def k8s_containers() -> list[Container]:
    documents = [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    config_maps = {
        d["metadata"]["name"]: {k: str(v) for k, v in d.get("data", {}).items()}
        for d in documents
        if d["kind"] == "ConfigMap"
    }
    found = []
    for doc in documents:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for spec in doc["spec"]["template"]["spec"]["containers"]:
            if not str(spec["image"]).startswith("shardctl"):
                continue
            env: dict[str, str] = {}
            for source in spec.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            fields = {}
            for var in spec.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                else:
                    fields[var["name"]] = var["valueFrom"]["fieldRef"]["fieldPath"]
            found.append(
                Container(
                    f"k8s {doc['kind']} {doc['metadata']['name']}",
                    [str(a) for a in spec.get("command", [])[1:]] + list(spec["args"]),
                    env,
                    fields,
                )
            )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Local:
    stack: StackHandle
    cluster: str
    topic: str
    workdir: Path

    def localize(self, container: Container, n: int) -> tuple[list[str], dict[str, str], int]:
        """The container's args and environment for a local process, and its metrics port."""
        local = self.stack.env()
        port = free_port()
        env: dict[str, str] = {}
        for name, value in container.env.items():
            if name in LOCAL_ETCD_HAS_NO_AUTH:
                continue
            if name in ENDPOINTS:
                value = local[name]
            elif name == "SHARDCTL_CLUSTER":
                value = self.cluster
            elif name == "SHARDCTL_METRICS_PORT":
                value = str(port)
            elif name == "SHARDCTL_MYSQL_PASSWORD_FILE":
                value = local["SHARDCTL_MYSQL_PASSWORD_FILE"]
            elif name.endswith("_FILE"):
                raise AssertionError(f"{container.where}: no local secret for {name}")
            env[name] = value
        for name, path in container.fields.items():
            assert path == "metadata.name", f"{container.where}: {name} from {path}"
            env[name] = f"{self.cluster}-pod-{n}"
        # The reader's topics and server id are the test's own, like the cluster.
        env["SHARDCTL_CDC_KAFKA_TOPIC"] = self.topic
        env["SHARDCTL_CDC_DEAD_LETTER_TOPIC"] = f"{self.topic}-dead"
        env["SHARDCTL_CDC_SERVER_ID"] = str(10_000 + zlib.crc32(self.cluster.encode()) % 10**9)
        args = list(container.args)
        for i, arg in enumerate(args[:-1]):
            following = args[i + 1]
            if arg == "--metrics-port":
                args[i + 1] = str(port)
            elif arg == "--topic" and following == "maxwell":
                args[i + 1] = self.topic
            elif arg in ("--replication-factor", "--min-insync-replicas"):
                args[i + 1] = "1"
        if args[1] == "run" and "SHARDCTL_METRICS_PORT" not in env and "--metrics-port" not in args:
            raise AssertionError(f"{container.where}: no metrics port, so no /readyz")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCTL_")}
        return args, {**clean, **env}, port

    def settings(self) -> Settings:
        return self.stack.settings(self.cluster)

    def status(self) -> ClusterStatus:
        return asyncio.run(read_status(self.settings()))


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def alive_and_ready(
    container: Container, proc: subprocess.Popen[bytes], port: int, log: Path
) -> bool:
    assert proc.poll() is None, f"{container.where} exited: {log.read_text()}"
    return ready(port)


def run_deploy_file(local: Local, containers: list[Container]) -> None:
    """cluster init first (a one-shot that must succeed), then the long-running
    containers side by side until each is ready and has done its work."""
    inits = [c for c in containers if c.args[:2] == ["cluster", "init"]]
    services = [c for c in containers if c.args[:2] != ["cluster", "init"]]
    assert len(inits) == 1, [c.where for c in containers]
    assert {tuple(c.args[:2]) for c in services} == {
        ("cdc", "run"),
        ("coordinator", "run"),
        ("worker", "run"),
    }
    args, env, _ = local.localize(inits[0], 0)
    done = subprocess.run(
        [*ENTRYPOINT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{inits[0].where}: {done.stderr}"
    shards = int(args[args.index("--shards") + 1])
    config = local.status().config
    assert config is not None and (config.num_shards, config.topics) == (shards, [local.topic])

    procs: list[tuple[Container, subprocess.Popen[bytes], int, Path]] = []
    try:
        for n, container in enumerate(services, start=1):
            args, env, port = local.localize(container, n)
            log = local.workdir / f"{n}-{args[0]}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*ENTRYPOINT, *args], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            procs.append((container, proc, port, log))
        for container, proc, port, log in procs:
            wait_for(
                f"{container.where} ready on /readyz",
                lambda c=container, proc=proc, port=port, log=log: alive_and_ready(
                    c, proc, port, log
                ),
                90,
            )

        source = next(c.args[c.args.index("--source") + 1] for c in services if c.args[0] == "cdc")

        def working() -> ClusterStatus | None:
            state = local.status()
            owned = sum(len(w.owned) for w in state.workers)
            return (
                state
                if state.leader is not None
                and state.readers.get(source) is not None
                and state.workers
                and owned == shards
                else None
            )

        state = wait_for("a leader, a reader and every shard owned", working, 90)
        assert state.generation is not None
    finally:
        for _, proc, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def local(stack: StackHandle, unique: str, tmp_path: Path) -> Iterator[Local]:
    here = Local(stack, unique, f"{unique}-maxwell", tmp_path)
    yield here
    asyncio.run(delete_cluster(here.settings()))
    delete_topics(stack.kafka_bootstrap, [here.topic, f"{here.topic}-dead"])


def test_the_compose_services_start_and_work(local: Local) -> None:
    run_deploy_file(local, compose_containers())


def test_the_kubernetes_containers_start_and_work(local: Local) -> None:
    containers = k8s_containers()
    assert any(c.fields for c in containers), "the worker id from the pod name is gone"
    run_deploy_file(local, containers)


def test_the_prestop_hook_is_a_command_the_cli_accepts(local: Local) -> None:
    """The worker's preStop hook, run as the kubelet runs it (no $(VAR) expansion):
    it drains the worker named by SHARDCTL_WORKER_ID and waits until it has left."""
    documents = [yaml.safe_load_all(p.read_text()) for p in sorted(K8S.glob("*.yaml"))]
    hooks: list[Any] = [
        spec["lifecycle"]["preStop"]["exec"]["command"]
        for docs in documents
        for doc in docs
        if doc and doc["kind"] == "Deployment"
        for spec in doc["spec"]["template"]["spec"]["containers"]
        if "lifecycle" in spec
    ]
    assert len(hooks) == 1 and hooks[0][0] == "shardctl"
    containers = k8s_containers()
    coordinator = next(c for c in containers if c.args[:2] == ["coordinator", "run"])
    worker = next(c for c in containers if c.args[:2] == ["worker", "run"])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, container in enumerate((coordinator, worker), start=1):
            args, env, port = local.localize(container, n)
            if n == 1:
                init = subprocess.run(
                    [*ENTRYPOINT, "cluster", "init", "--shards", "2", "--topic", local.topic],
                    env=env, capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                assert init.returncode == 0, init.stderr
            with (local.workdir / f"{args[0]}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*ENTRYPOINT, *args], env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
            wait_for(f"{container.where} ready", lambda port=port: ready(port), 90)
        wid = env["SHARDCTL_WORKER_ID"]
        wait_for(
            "the worker owning both shards",
            lambda: any(w.id == wid and len(w.owned) == 2 for w in local.status().workers),
            60,
        )
        hook = subprocess.run(
            [*ENTRYPOINT, *hooks[0][1:]], env=env, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert hook.returncode == 0, hook.stderr
        assert hook.stdout.strip() == f"{wid}: draining; it has left"
        worker_log = (local.workdir / "worker.log").read_text()
        assert procs[1].wait(60) == 0, worker_log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
