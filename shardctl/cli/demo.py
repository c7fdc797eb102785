"""`shardctl demo` (`make demo`): the whole pipeline on the local stack, in one command.

    STACK UP --> SCHEMA --> START (reader, coordinator, 3 sql-sink workers)
      --> LOAD (steady writes; a 4th worker joins, one drains, one is killed -9)
      --> CATCH UP (load stopped; wait until the sink has every change)
      --> VERDICT (CHECKSUM TABLE source == sink; figures) --> CLEAN UP

Everything the demo creates has a unique name (cluster `demo-<token>`, databases
`shardctl_demo_<token>` and `..._sink`, topic `demo-<token>`), so it can run on a
shared stack, and it removes all of it at the end (unless --keep). Ctrl-C at any
point stops every process the demo started and cleans up. The demo uses the local
stack's MariaDB root account (no password, loopback only) to create its schema and
to write the load; the reader itself reads the binlog as the CDC user.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.common import raise_on_interrupt
from shardctl.core.processes import ProcessExited, ProcessGroup

if TYPE_CHECKING:
    from shardctl.core.config import Settings

TABLE = (
    "CREATE TABLE orders (id INT PRIMARY KEY, customer INT NOT NULL, "
    "amount DECIMAL(12,2) NOT NULL, status VARCHAR(16) NOT NULL, note VARBINARY(16) NULL)"
)
TTL_S = 3  # short leases, so the killed worker's shards move within seconds
SOURCE = "demo"


class DemoError(Exception):
    """The demo cannot go on; the message says which step failed."""


@dataclass
class Names:
    token: str
    cluster: str = ""
    database: str = ""
    sink_database: str = ""
    topic: str = ""

    def __post_init__(self) -> None:
        self.cluster = f"demo-{self.token}"
        self.database = f"shardctl_demo_{self.token}"
        self.sink_database = f"{self.database}_sink"
        self.topic = f"demo-{self.token}"


@dataclass
class Load:
    """A steady stream of small transactions (inserts, updates, deletes) on `orders`."""

    connect: dict[str, Any]
    database: str
    txn_per_s: float
    seed: int = 7
    stop: threading.Event = field(default_factory=threading.Event)
    transactions: int = 0
    changes: int = 0
    error: Exception | None = None

    def run(self) -> None:
        import pymysql

        try:
            self._run()
        except (pymysql.err.MySQLError, OSError) as exc:  # reported by the verdict
            self.error = exc

    def _run(self) -> None:
        import pymysql

        rng = random.Random(self.seed)
        live: list[int] = []
        next_id = 1
        conn = pymysql.connect(**self.connect, database=self.database, autocommit=True)
        period = 1.0 / self.txn_per_s
        next_at = time.monotonic()
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("BEGIN")
                    for _ in range(rng.randint(1, 3)):
                        op = rng.random()
                        if not live or op < 0.5:
                            cur.execute(
                                "INSERT INTO orders VALUES (%s, %s, %s, 'new', %s)",
                                (
                                    next_id,
                                    rng.randint(1, 500),
                                    f"{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}",
                                    rng.choice([None, rng.randbytes(6)]),
                                ),
                            )
                            live.append(next_id)
                            next_id += 1
                        elif op < 0.85:
                            cur.execute(
                                "UPDATE orders SET amount = amount + 1, status = %s WHERE id = %s",
                                (rng.choice(["paid", "shipped", "returned"]), rng.choice(live)),
                            )
                        else:
                            victim = live.pop(rng.randrange(len(live)))
                            cur.execute("DELETE FROM orders WHERE id = %s", (victim,))
                        self.changes += 1
                    cur.execute("COMMIT")
                    self.transactions += 1
                    next_at += period
                    self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            conn.close()


class Demo:
    def __init__(self, settings: Settings, names: Names, env: dict[str, str], workdir: Path):
        self.settings = settings
        self.names = names
        self.env = env
        self.workdir = workdir
        self.processes = ProcessGroup(workdir, env, own_session=True)
        self.root: dict[str, Any] = {
            "host": settings.mysql.host,
            "port": settings.mysql.port,
            "user": "root",
            "password": "",
        }

    # -- set-up ---------------------------------------------------------------------

    def sql(self, statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
        import pymysql

        conn = pymysql.connect(**self.root, database=database, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_schema(self, num_shards: int) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        from shardctl.core.etcd import EtcdClient
        from shardctl.core.keyspace import Keyspace
        from shardctl.core.records import ClusterConfig

        n = self.names
        for db in (n.database, n.sink_database):
            self.sql(f"CREATE DATABASE `{db}`")
            self.sql(TABLE, db)
        conf: dict[str, str | int | float | bool] = dict(self.settings.kafka.client_config())
        admin = AdminClient(conf)
        admin.create_topics([NewTopic(n.topic, num_partitions=num_shards, replication_factor=1)])[
            n.topic
        ].result(30)
        config = ClusterConfig(num_shards=num_shards, topics=[n.topic], transport="kafka")

        async def write_config() -> None:
            async with EtcdClient(self.settings.etcd) as client:
                await client.put(Keyspace.of(self.settings).config, config.encode())

        asyncio.run(write_config())

    def spawn(self, name: str, *args: str) -> None:
        self.processes.shardctl(name, *args)

    def start_worker(self, name: str) -> None:
        self.spawn(
            name,
            "worker",
            "run",
            "--id",
            name,
            "--topic",
            self.names.topic,
            "--handler",
            "sql",
            "--ttl",
            str(TTL_S),
            "--commit-interval",
            "0.5",
        )

    def wait_for_checkpoint(self, timeout: float) -> None:
        """The reader starts at the server's current position; writes before it has
        stored that position would not be read, so the load waits for it."""
        from shardctl.core.etcd import EtcdClient
        from shardctl.core.keyspace import Keyspace

        key = Keyspace.of(self.settings).cdc_checkpoint(SOURCE)

        async def stored() -> bool:
            async with EtcdClient(self.settings.etcd) as client:
                return await client.get(key) is not None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if asyncio.run(stored()):
                return
            self.check_alive("cdc")
            time.sleep(0.5)
        raise DemoError(f"the CDC reader stored no checkpoint at {key} within {timeout:.0f}s")

    def check_alive(self, name: str) -> None:
        try:
            self.processes.check_alive(name)
        except ProcessExited as exc:
            raise DemoError(str(exc)) from None

    # -- verdict ----------------------------------------------------------------------

    def checksums(self) -> tuple[int, int, int, int]:
        """(source checksum, sink checksum, source rows, sink rows)."""
        n = self.names
        src = self.sql("CHECKSUM TABLE orders", n.database)[0][1]
        dst = self.sql("CHECKSUM TABLE orders", n.sink_database)[0][1]
        src_rows = self.sql("SELECT COUNT(*) FROM orders", n.database)[0][0]
        dst_rows = self.sql("SELECT COUNT(*) FROM orders", n.sink_database)[0][0]
        return int(src or 0), int(dst or 0), int(src_rows), int(dst_rows)

    # -- tear-down --------------------------------------------------------------------

    def stop_processes(self) -> None:
        """Workers first, while the coordinator still runs, so their drain completes
        (every worker draining: the coordinator assigns nothing, they release and
        exit); then the coordinator and the reader."""
        names = list(self.processes.procs)
        workers = [n for n in names if n.startswith("w")]
        for group in (workers, [n for n in names if n not in workers]):
            for name in self.processes.stop(group, grace_s=15):
                # leases then expire, exactly as after a crash
                typer.echo(f"{name}: did not stop within 15 s; killed", err=True)

    def remove_everything(self) -> None:
        from confluent_kafka.admin import AdminClient

        from shardctl.core.etcd import EtcdClient
        from shardctl.core.keyspace import Keyspace

        n = self.names
        for db in (n.database, n.sink_database):
            self.sql(f"DROP DATABASE IF EXISTS `{db}`")
        conf: dict[str, str | int | float | bool] = dict(self.settings.kafka.client_config())
        admin = AdminClient(conf)
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [t for t in (n.topic, f"{n.topic}.dlq") if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed).values():
                future.result(30)

        async def forget() -> None:
            async with EtcdClient(self.settings.etcd) as client:
                await client.delete_prefix(Keyspace.of(self.settings).root)

        asyncio.run(forget())


# -- the command ----------------------------------------------------------------------


@dataclass
class Step:
    at_fraction: float
    label: str
    done: bool = False


def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds of write load (the whole run takes longer).", min=10)
    ] = 60.0,
    shards: Annotated[int, typer.Option(help="Number of shards.", min=2)] = 8,
    rate: Annotated[
        float, typer.Option(help="Transactions per second of the write load.", min=1)
    ] = 40.0,
    stack: Annotated[
        bool, typer.Option(help="Bring up the local stack first (`shardctl dev up`).")
    ] = True,
    keep: Annotated[
        bool, typer.Option(help="Keep the databases, topic and etcd keys afterwards.")
    ] = False,
    catch_up_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the sink after the load stops.")
    ] = 120.0,
) -> None:
    """Run the whole pipeline on the local stack: MariaDB -> CDC -> Kafka -> 3 workers ->
    SQL sink, under load, with a worker added, one drained and one killed; then check
    that the sink equals the source and print the figures."""
    from rich.console import Console

    console = Console()
    env = dict(os.environ)
    if stack:
        from shardctl.cli.dev import load_devstack

        mod = load_devstack()
        dev = mod.Stack()
        try:
            dev.up(None, echo=lambda line: console.print(f"[dim]{line}[/dim]"))
        except mod.StackError as exc:
            typer.secho(f"error: the local stack did not come up: {exc}", fg="red", err=True)
            raise typer.Exit(1) from None
        env.update(dev.env())
    names = Names(secrets.token_hex(3))
    env.update(
        {
            "SHARDCTL_CLUSTER": names.cluster,
            "SHARDCTL_CDC_SOURCE": SOURCE,
            "SHARDCTL_CDC_KAFKA_TOPIC": names.topic,
            "SHARDCTL_CDC_FILTER": f"exclude: *.*, include: {names.database}.orders",
            "SHARDCTL_CDC_LEASE_TTL_S": str(TTL_S),
            # Our own replica id: the server evicts a replica that reuses one.
            "SHARDCTL_CDC_SERVER_ID": str(10_000 + zlib.crc32(names.token.encode()) % 10**9),
            "SHARDCTL_SINK_SQL_USER": "root",
            "SHARDCTL_SINK_SQL_DATABASE": names.sink_database,
        }
    )
    env.pop("SHARDCTL_SINK_SQL_PASSWORD", None)
    env.pop("SHARDCTL_SINK_SQL_PASSWORD_FILE", None)
    os.environ.update(env)
    import pymysql

    from shardctl.core.config import load_settings

    settings = load_settings(cluster=names.cluster)
    env["SHARDCTL_SINK_SQL_HOST"] = settings.mysql.host
    env["SHARDCTL_SINK_SQL_PORT"] = str(settings.mysql.port)
    workdir = Path(tempfile.mkdtemp(prefix=f"shardctl-demo-{names.token}-"))
    run = Demo(settings, names, env, workdir)
    console.print(
        f"demo [bold]{names.cluster}[/bold]: database {names.database}, topic {names.topic}, "
        f"{shards} shards; process logs in {workdir}"
    )
    verdict = False
    raise_on_interrupt()
    try:
        verdict = _run(run, console, duration, shards, rate, catch_up_timeout)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything the demo started[/yellow]")
    except (DemoError, pymysql.err.MySQLError) as exc:
        console.print(f"[red]demo failed: {exc}[/red]")
    finally:
        run.stop_processes()
        if keep:
            console.print(f"kept: databases {names.database}(_sink), topic {names.topic}")
        else:
            run.remove_everything()
    raise typer.Exit(0 if verdict else 1)


def _run(
    run: Demo, console: Any, duration: float, shards: int, rate: float, catch_up_timeout: float
) -> bool:
    """Start the pipeline, play the scenario under load, then report: True when the
    sink equals the source."""
    _start_pipeline(run, shards)
    scenario = _Scenario(run, console, duration, rate, catch_up_timeout)
    try:
        scenario.play()
    finally:
        scenario.close()
    return _report(run, console, scenario)


def _start_pipeline(run: Demo, shards: int) -> None:
    """Schema, the reader, the coordinator and three workers; returns once the reader
    stored its first checkpoint, so that no write of the load goes unread."""
    run.create_schema(shards)
    run.spawn("cdc", "cdc", "run", "--reader-id", "demo-reader", "--num-shards", str(shards))
    run.spawn(
        "coordinator",
        "coordinator",
        "run",
        "--id",
        "demo-coordinator",
        "--ttl",
        str(TTL_S),
        "--stabilization",
        "0.5",
    )
    for n in (1, 2, 3):
        run.start_worker(f"w{n}")
    run.wait_for_checkpoint(60)


class _Scenario:
    """The write load, the three operator steps at their times, and the live view,
    until the sink has caught up after the load (or `catch_up_timeout` passed)."""

    def __init__(
        self, run: Demo, console: Any, duration: float, rate: float, catch_up_timeout: float
    ) -> None:
        from shardctl.cli.live import LiveView, SnapshotSource

        self.run = run
        self.console = console
        self.duration = duration
        self.rate = rate
        self.catch_up_timeout = catch_up_timeout
        self.load = Load(run.root, run.names.database, rate)
        self.steps = [Step(0.25, "add worker w4"), Step(0.45, "drain w2"), Step(0.65, "kill -9 w3")]
        self.view = LiveView(f"shardctl demo ({run.names.cluster})")
        self.interactive: bool = console.is_terminal
        self.thread = threading.Thread(target=self.load.run, name="demo-load", daemon=True)
        self.stopped_load_at: float | None = None
        self.caught_up_at: float | None = None
        self._last_print = 0.0
        # One event loop for every snapshot, so that the view keeps one etcd connection
        # and one Kafka client.
        self.snapshots = SnapshotSource(run.settings, run.names.topic)
        self.loop = asyncio.Runner()

    def note(self, line: str) -> None:
        self.view.events.append(line)
        if not self.interactive:  # the live view shows them; plain output prints them now
            self.console.print(line)

    def play(self) -> None:
        from rich.live import Live

        started = time.monotonic()
        self.thread.start()
        self.note(f"{0.0:6.1f}s  load started: ~{self.rate:.0f} transactions/s")
        live_or_not = (
            Live(console=self.console, auto_refresh=False) if self.interactive else _Nothing()
        )
        with live_or_not as live:
            while not self._tick(time.monotonic() - started, live):
                time.sleep(1.0)

    def _tick(self, t: float, live: Any) -> bool:
        """One look at the cluster at `t` s; True when the scenario is over."""
        from confluent_kafka import KafkaException

        from shardctl.core.etcd import EtcdError

        for step in self.steps:
            if not step.done and t >= step.at_fraction * self.duration:
                self._act(step, t)
        for name in ("cdc", "coordinator"):
            self.run.check_alive(name)
        if self.load.error is not None:
            raise DemoError(f"the write load failed: {self.load.error}")
        if self.stopped_load_at is None and t >= self.duration:
            self._stop_load(t)
        try:
            snap = self.loop.run(self.snapshots.take())
        except (EtcdError, KafkaException) as exc:
            # etcd or Kafka restarting: the processes ride it out, so does the view.
            self.note(f"{t:6.1f}s  status not readable now: {exc}")
            return self._timed_out(t)
        self._show(snap, t, live)
        if self.stopped_load_at is None:
            return False
        src, dst, src_rows, dst_rows = self.run.checksums()
        if src == dst and src_rows == dst_rows and snap.total_lag == 0:
            self.caught_up_at = t
            return True
        return self._timed_out(t)

    def _timed_out(self, t: float) -> bool:
        return self.stopped_load_at is not None and t - self.stopped_load_at > self.catch_up_timeout

    def _act(self, step: Step, t: float) -> None:
        if step.label.startswith("add"):
            self.run.start_worker("w4")
        elif step.label.startswith("drain"):
            self._drain("w2")
        else:
            self.run.processes.kill9("w3")
        step.done = True
        self.note(f"{t:6.1f}s  {step.label}")

    def _drain(self, worker: str) -> None:
        """`shardctl drain`, as an operator would; retried while etcd is briefly away."""
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [sys.executable, "-m", "shardctl.cli.main", "drain", worker],
                env=self.run.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"shardctl drain {worker} failed for 30 s: {done.stderr.strip()}")
            time.sleep(1.0)

    def _stop_load(self, t: float) -> None:
        self.load.stop.set()
        self.thread.join(30)
        self.stopped_load_at = t
        self.note(
            f"{t:6.1f}s  load stopped after {self.load.transactions} transactions "
            f"({self.load.changes} row changes); waiting for the sink"
        )

    def _show(self, snap: Any, t: float, live: Any) -> None:
        rendered = self.view.update(snap)
        if self.interactive:
            live.update(rendered, refresh=True)
        elif t - self._last_print >= 5:
            self._last_print = t
            rates = self.view.last_rates
            eps = "-" if rates.events_per_s is None else f"{rates.events_per_s:.0f}"
            owned = " ".join(f"{w.id}:{len(w.owned)}" for w in snap.status.workers)
            self.console.print(
                f"{t:6.1f}s generation {snap.status.generation} shards per worker "
                f"{owned} lag {snap.total_lag} events/s {eps}"
            )

    def close(self) -> None:
        self.load.stop.set()
        self.loop.run(self.snapshots.close())
        self.loop.close()


def _report(run: Demo, console: Any, scenario: _Scenario) -> bool:
    """Print the figures and the verdict; on a mismatch, what each shard and process
    says."""
    src, dst, src_rows, dst_rows = run.checksums()
    view, load = scenario.view, scenario.load
    first, last = view.first, view.previous
    rebalances = view.rates(last).rebalances if last is not None else 0
    handled = last.committed if last is not None else 0
    load_s = scenario.stopped_load_at or 0.0
    ok = src == dst and src_rows == dst_rows
    console.print("")
    console.print("[bold]figures[/bold]")
    console.print(f"  write load          {load_s:.1f} s, {load.transactions} transactions")
    console.print(
        f"  row changes         {load.changes} ({load.changes / max(load_s, 1e-9):.0f}/s)"
    )
    console.print(f"  events committed    {handled} (Kafka offsets committed by the workers)")
    console.print(
        f"  rebalances          {rebalances} (generation "
        f"{first.status.generation if first else '-'} -> "
        f"{last.status.generation if last else '-'})"
    )
    if scenario.caught_up_at is not None and scenario.stopped_load_at is not None:
        catch_up = scenario.caught_up_at - scenario.stopped_load_at
        console.print(f"  catch-up            {catch_up:.1f} s after the load stopped")
    console.print(f"  source rows         {src_rows}, CHECKSUM TABLE {src}")
    console.print(f"  sink rows           {dst_rows}, CHECKSUM TABLE {dst}")
    if ok:
        console.print("[bold green]VERDICT: source == sink[/bold green]")
        return True
    console.print("[bold red]VERDICT: source != sink[/bold red]")
    if last is not None:
        owner_of = last.status.owner_of
        for shard in range(last.status.shard_count):
            if last.lag(shard):
                console.print(
                    f"shard {shard} (owner {owner_of.get(shard, 'none')}): committed "
                    f"{last.positions.get(shard)}, {last.lag(shard)} events behind"
                )
    for name in run.processes.procs:
        console.print(f"--- {name} (last lines)\n{run.processes.tail(name)}")
    return False


class _Nothing:
    """Stands in for rich's Live when the output is not a terminal."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *_: object, **__: object) -> None:
        return None
