"""The workers' side of an online change of the shard count (`shardctl shards set`).

Once the reader has switched (`reshard` is `switched`, see `cdc.reshard`), a key
may have older changes in its old shard and newer ones in its new shard. A shard
that gains keys (`Reshard.gaining`) therefore handles, per topic, only records
below its barrier (published with the old count) until every shard below
`from_shards` has committed an offset at or past its own barrier: from then on no
change of the old count is left unhandled anywhere, and the gaining shards go on.
Shards that gain nothing are never held.

The first worker that sees every old shard past its barrier marks the change
`complete`, together with `config.num_shards` = `to_shards`, in one txn guarded by
both keys' mod_revision; a lost race is harmless (someone else completed it).

Offsets are read from etcd (`offsets/<shard>`, what owners commit every commit
interval), so a gaining shard resumes within about one commit interval of the
slowest old shard passing its barrier. Without positions (NSQ) nothing is held:
NSQ keeps no order to protect. A shrink on NSQ completes only once nsqd holds
nothing more for the removed shards' topics (no message queued, in flight or
deferred on the topic or any of its channels): until then those shards keep their
owners, who consume what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from shardctl.core.config import Settings
from shardctl.core.etcd import EtcdClient, EtcdError, ModRevisionIs, Put
from shardctl.core.etcd.watch import Mirror
from shardctl.core.keyspace import Keyspace
from shardctl.core.records import ClusterConfig, OffsetRecord, RecordError, Reshard
from workers.transports.nsq import shard_topic

log = logging.getLogger(__name__)

POLL_S = 0.2


def barrier_passed(reshard: Reshard, committed: Mapping[int, Mapping[str, int]]) -> bool:
    """True when every shard below `from_shards` has committed, for every barrier
    topic, a position at or past its barrier (`committed`: shard -> {topic: next
    offset}; a shard or topic without a commit counts as position 0)."""
    for topic, marks in reshard.barrier.items():
        for shard in range(min(reshard.from_shards, len(marks))):
            if committed.get(shard, {}).get(topic, 0) < marks[shard]:
                return False
    return True


def lagging_shards(reshard: Reshard, committed: Mapping[int, Mapping[str, int]]) -> list[int]:
    """The old shards not yet past their barrier (for logs)."""
    late: set[int] = set()
    for topic, marks in reshard.barrier.items():
        for shard in range(min(reshard.from_shards, len(marks))):
            if committed.get(shard, {}).get(topic, 0) < marks[shard]:
                late.add(shard)
    return sorted(late)


def hold_limits(reshard: Reshard | None, shard: int) -> dict[str, int] | None:
    """Per topic, the first position `shard` may not handle yet; None: nothing held.

    A topic absent from the barrier did not exist at the switch: all of it is newer.
    """
    if reshard is None or reshard.state != "switched" or shard not in reshard.gaining:
        return None
    return {topic: marks[shard] for topic, marks in reshard.barrier.items() if shard < len(marks)}


def nsq_queued(http_address: str, topics: Sequence[str]) -> int:
    """Messages nsqd still holds for `topics`: queued on the topic, or queued, in
    flight or deferred on any of its channels. OSError names the address."""
    total = 0
    for topic in topics:
        query = urllib.parse.urlencode({"format": "json", "topic": topic})
        url = f"http://{http_address}/stats?{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                stats: Any = json.loads(reply.read())
        except (OSError, ValueError) as exc:
            raise OSError(f"nsqd stats at {http_address} for topic {topic}: {exc}") from exc
        for found in stats.get("topics") or []:
            if found.get("topic_name") != topic:
                continue
            total += int(found.get("depth", 0))
            for channel in found.get("channels") or []:
                total += int(channel.get("depth", 0))
                total += int(channel.get("in_flight_count", 0))
                total += int(channel.get("deferred_count", 0))
    return total


class ReshardGate:
    """Tells the consumer which records of a gaining shard wait; completes the change."""

    def __init__(self, settings: Settings, keyspace: Keyspace, poll_s: float = POLL_S) -> None:
        self._settings = settings
        self._keys = keyspace
        self._poll_s = poll_s
        self._client: EtcdClient | None = None
        self._mirror: Mirror | None = None
        self._task: asyncio.Task[None] | None = None
        self._reshard: Reshard | None = None
        self._passed = False
        self._changed = asyncio.Event()
        self._held_logged: set[int] = set()
        self._revision = -1  # mod_revision of the record last read (0: none)
        self.progress_reads = 0  # times the old shards' progress was read

    async def start(self) -> None:
        """Connect and follow the `reshard` record. Until it is first read, every
        positional record waits: whether a change is under way is not known yet."""
        self._client = EtcdClient(self._settings.etcd)
        await self._client.connect()
        self._mirror = Mirror(self._client, self._keys.reshard, prefix=False).start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._mirror is not None:
            await self._mirror.stop()
        if self._client is not None:
            await self._client.close()

    def limits(self, shard: int) -> dict[str, int] | None:
        """Per topic, the first position of `shard` that waits; None when none waits.
        A topic missing from the map waits from position 0."""
        if self._mirror is None or not self._mirror.ready.is_set():
            return {}
        self._update()
        if self._passed:
            return None
        found = hold_limits(self._reshard, shard)
        if found is not None and shard not in self._held_logged:
            self._held_logged.add(shard)
            assert self._reshard is not None
            log.info(
                "shard %d gains keys from the change to %d shards: records at or past %s "
                "wait until every old shard has passed the switch at %s",
                shard,
                self._reshard.to_shards,
                found or "the start",
                self._reshard.position,
            )
        return found

    async def wait(self, wake: asyncio.Event, timeout_s: float) -> None:
        """Until the gate changes, `wake` is set, or `timeout_s` passes."""
        changed = self._changed
        waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _signal(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _update(self) -> None:
        assert self._mirror is not None
        kv = self._mirror.items.get(self._keys.reshard)
        revision = 0 if kv is None else kv.mod_revision
        if revision == self._revision:
            return
        self._revision = revision
        previous = self._reshard
        try:
            self._reshard = None if kv is None else Reshard.decode(kv.key, kv.value)
        except RecordError as exc:
            # Never guessed: the gate stays as it was, and says why for each version.
            log.error("%s; gaining shards stay as they were", exc)
            return
        if self._reshard != previous:
            self._passed = False
            self._held_logged.clear()
            self._signal()

    async def _run(self) -> None:
        assert self._mirror is not None
        await self._mirror.ready.wait()
        self._signal()
        while True:
            self._mirror.changed.clear()
            self._update()
            reshard = self._reshard
            if reshard is not None and reshard.state == "switched":
                try:
                    if not self._passed:
                        await self._check(reshard)
                    if self._passed:
                        # Until the record says complete: a lost race or a concurrent
                        # config edit only means trying again.
                        await self._complete()
                except (EtcdError, RecordError, OSError) as exc:
                    log.warning(
                        "change to %d shards: progress not read or recorded: %s",
                        reshard.to_shards,
                        exc,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mirror.changed.wait(), self._poll_s)

    async def _check(self, reshard: Reshard) -> None:
        assert self._client is not None
        self.progress_reads += 1
        listing = await self._client.get_prefix(self._keys.offsets_prefix)
        committed: dict[int, dict[str, int]] = {}
        for kv in listing.items:
            shard = self._keys.shard_of_offset_key(kv.key)
            if shard < reshard.from_shards:
                committed[shard] = dict(OffsetRecord.decode(kv.key, kv.value).positions)
        if not barrier_passed(reshard, committed):
            return
        if reshard.to_shards < reshard.from_shards:
            config_kv = await self._client.get(self._keys.config)
            config = (
                None if config_kv is None else ClusterConfig.decode(config_kv.key, config_kv.value)
            )
            if config is not None and config.transport == "nsq":
                removed = [
                    shard_topic(topic, shard)
                    for topic in config.topics
                    for shard in range(reshard.to_shards, reshard.from_shards)
                ]
                address = self._settings.nsq.nsqd_http_address
                queued = await asyncio.to_thread(nsq_queued, address, removed)
                if queued:
                    log.info(
                        "change from %d to %d shards: nsqd still holds %d message(s) of the "
                        "removed shards",
                        reshard.from_shards,
                        reshard.to_shards,
                        queued,
                    )
                    return
        log.info(
            "change from %d to %d shards: every old shard passed the switch at %s; "
            "gaining shards go on",
            reshard.from_shards,
            reshard.to_shards,
            reshard.position,
        )
        self._passed = True
        self._signal()

    async def _complete(self) -> None:
        assert self._client is not None
        reshard_kv = await self._client.get(self._keys.reshard)
        config_kv = await self._client.get(self._keys.config)
        if reshard_kv is None or config_kv is None:
            return
        reshard = Reshard.decode(reshard_kv.key, reshard_kv.value)
        if reshard.state != "switched":
            return
        config = ClusterConfig.decode(config_kv.key, config_kv.value)
        done = reshard.model_copy(update={"state": "complete", "completed_at": time.time()})
        ok, _ = await self._client.txn(
            [
                ModRevisionIs(self._keys.reshard, reshard_kv.mod_revision),
                ModRevisionIs(self._keys.config, config_kv.mod_revision),
            ],
            [
                Put(self._keys.reshard, done.encode()),
                Put(
                    self._keys.config,
                    config.model_copy(update={"num_shards": reshard.to_shards}).encode(),
                ),
            ],
        )
        if ok:
            log.info("change from %d to %d shards complete", reshard.from_shards, reshard.to_shards)
