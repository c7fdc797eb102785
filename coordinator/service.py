"""The coordinator process: several replicas, one leader, one assignment writer.

Each replica (`CoordinatorState`, one transition per line):

    CANDIDATE --won coordinator/leader--> LEADING
    LEADING --lease lost or key taken (a new session if the lease was lost)--> CANDIDATE
    LEADING --stop: resign (delete the leader key if still ours)--> DONE
    CANDIDATE --stop--> DONE

While LEADING it mirrors workers/, config, assignment and owners/, and writes a new
generation when the inputs call for one:
- Membership changes are applied only after the member set has been quiet for
  `stabilization_s` (at most 10 x that in a row), so a flapping worker does not
  cause a rebalance storm. Exception: when a member whose lease is gone still has
  shards assigned, those shards have no owner, and the change is applied at once.
- With a churn budget (`max_moves`), the next generation waits until every shard
  moved by the previous one is owned by its new owner (visible in owners/).
- While `maintenance` exists (`shardctl maintenance on`), nothing is written: the
  assignment stays as it is, even for shards of workers that died. When it is
  removed, the next generation is computed from the members of that moment.
- Restart grace: a member whose record vanishes while it is active (it died; a
  drained or draining worker is not reserved) and whose record had
  `restart_grace` G > 0 stays in the computation for G seconds, so its shards stay
  assigned to it. If the same worker id registers again in time, nothing moves.
  The reservations live in the leader's memory: a new leader starts without them.
A standby notices the leader's departure by watching the leader key, so takeover
takes at most the leader's TTL plus one campaign round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from coordinator.assignment import Member
from coordinator.writer import Current, compute_assignment, members_from, write_assignment
from shardctl.core import health
from shardctl.core.aio import threadsafe_event, wait_any
from shardctl.core.config import Settings
from shardctl.core.etcd import (
    Election,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Leadership,
    Mirror,
    NotLeader,
    Session,
    SessionLost,
    open_session,
    revoke_stale_lease,
)
from shardctl.core.keyspace import Keyspace
from shardctl.core.metrics import COORD_GENERATION, COORD_LEADER, COORD_MOVES, COORD_REBALANCES
from shardctl.core.records import Assignment, ClusterConfig, RecordError
from shardctl.core.states import Transitions

log = logging.getLogger(__name__)


def moved_shards(old: Assignment | None, new: Assignment) -> int:
    """Shards that change from one worker to another (a first owner is not a move)."""
    if old is None:
        return 0
    return sum(
        1
        for before, after in zip(old.owners, new.owners, strict=False)
        if before is not None and before != after
    )


class CoordinatorState(Enum):
    CANDIDATE = "candidate"  # campaigning, or waiting for etcd or a session
    LEADING = "leading"
    DONE = "done"


COORDINATOR_TRANSITIONS = Transitions(
    "coordinator",
    {
        CoordinatorState.CANDIDATE: {CoordinatorState.LEADING, CoordinatorState.DONE},
        CoordinatorState.LEADING: {CoordinatorState.CANDIDATE, CoordinatorState.DONE},
    },
)


@dataclass
class _LeaderView:
    """The leader's mirrors of etcd."""

    workers: Mirror
    config: Mirror
    current: Mirror  # the assignment
    owners: Mirror
    maintenance: Mirror

    @classmethod
    def start(cls, client: EtcdClient, keys: Keyspace) -> _LeaderView:
        return cls(
            workers=Mirror(client, keys.workers_prefix).start(),
            config=Mirror(client, keys.config, prefix=False).start(),
            current=Mirror(client, keys.assignment, prefix=False).start(),
            owners=Mirror(client, keys.owners_prefix).start(),
            maintenance=Mirror(client, keys.maintenance, prefix=False).start(),
        )

    @property
    def mirrors(self) -> tuple[Mirror, ...]:
        return (self.workers, self.config, self.current, self.owners, self.maintenance)


@dataclass
class _LeaderRun:
    """What `Coordinator._lead` keeps from one pass to the next."""

    last_change: float  # when the member set last changed
    applied: dict[str, Member] | None = None  # members of the last computation
    last_seen: dict[str, Member] | None = None
    pending_since: float = float("inf")
    config_missing_logged: bool = False
    frozen_logged: bool = False
    frozen_members: dict[str, Member] | None = None  # last logged while frozen
    registered_before: dict[str, Member] = field(default_factory=dict)
    reserved: dict[str, tuple[float, Member]] = field(default_factory=dict)  # id -> deadline


@dataclass
class CoordinatorOptions:
    coordinator_id: str
    ttl: int = 10
    stabilization_s: float = 1.0
    max_moves: int | None = None


class Coordinator:
    def __init__(self, settings: Settings, options: CoordinatorOptions) -> None:
        self.settings = settings
        self.options = options
        self.keys = Keyspace.of(settings)
        self.stop_requested = asyncio.Event()
        self.state = CoordinatorState.CANDIDATE
        self.unplaceable: list[int] = []  # as last logged

    def _move(self, new: CoordinatorState) -> None:
        if new is not self.state:
            self.state = COORDINATOR_TRANSITIONS.check(self.options.coordinator_id, self.state, new)

    async def run(self) -> None:
        me = self.options.coordinator_id
        async with EtcdClient(self.settings.etcd) as client:
            election = Election(client, self.keys.coordinator_leader)
            stale_leases: list[int] = []  # of lost sessions whose revoke failed
            while not self.stop_requested.is_set():
                session = await open_session(
                    self.settings.etcd,
                    self.options.ttl,
                    f"coordinator-{me}",
                    self.stop_requested,
                )
                if session is None:
                    break
                health.update("standby", session)
                try:
                    # A leader key under an old lease (renewed by an etcd restart)
                    # would hold every replica off for a full TTL.
                    for lease in list(stale_leases):
                        if await revoke_stale_lease(client, lease, session, self.stop_requested):
                            stale_leases.remove(lease)
                    await self._campaign_and_lead(client, election, session)
                finally:
                    if not await session.close(revoke=True):
                        stale_leases.append(session.lease_id)
            self._move(CoordinatorState.DONE)
            log.info("%s: stop requested; leaving", me)

    async def _campaign_and_lead(
        self, client: EtcdClient, election: Election, session: Session
    ) -> None:
        me = self.options.coordinator_id
        while not session.is_lost and not self.stop_requested.is_set():
            campaign = asyncio.ensure_future(election.campaign(session, me))
            stop = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait({campaign, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not campaign.done():
                campaign.cancel()
                await asyncio.gather(campaign, return_exceptions=True)
                return
            try:
                leadership = campaign.result()
            except SessionLost:
                return
            try:
                await self._lead(client, leadership)
            finally:
                stopping = self.stop_requested.is_set()
                self._move(CoordinatorState.DONE if stopping else CoordinatorState.CANDIDATE)
                if stopping:
                    try:
                        await leadership.resign()
                    except EtcdError as exc:
                        log.warning(
                            "%s: resign failed; the key expires with the lease: %s", me, exc
                        )

    async def _lead(self, client: EtcdClient, leadership: Leadership) -> None:
        me = self.options.coordinator_id
        view = _LeaderView.start(client, self.keys)
        lost = threadsafe_event(leadership.session.on_lost)
        deposed = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_leadership(leadership, deposed))
        ended = [lost, deposed, self.stop_requested]
        try:
            for m in view.mirrors:
                await wait_any([m.ready, *ended], None)
            if not all(m.ready.is_set() for m in view.mirrors):
                return  # lost, deposed or stopping before etcd answered
            self._move(CoordinatorState.LEADING)
            log.info(
                "%s: leading with token %d",
                me,
                leadership.token,
                extra={"coordinator": me, "token": leadership.token},
            )
            health.update("leading")
            COORD_LEADER.set(1)
            run = _LeaderRun(last_change=time.monotonic())
            while not any(event.is_set() for event in ended):
                for m in view.mirrors:
                    m.check()
                    m.changed.clear()
                now = time.monotonic()
                try:
                    delay = await self._lead_once(leadership, view, run, now)
                except (NotLeader, SessionLost) as exc:
                    log.error("%s: %s", me, exc)
                    return
                except EtcdUnavailable as exc:
                    log.warning("%s: etcd unavailable, retrying: %s", me, exc)
                    delay = 0.5
                except (EtcdError, RecordError) as exc:
                    log.error("%s: %s", me, exc)
                    delay = 1.0
                if run.reserved:
                    until_expiry = max(0.0, min(d for d, _ in run.reserved.values()) - now)
                    delay = until_expiry if delay is None else min(delay, until_expiry)
                await wait_any([*(m.changed for m in view.mirrors), *ended], delay)
        finally:
            COORD_LEADER.set(0)
            health.update("standby")
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            for m in view.mirrors:
                await m.stop()

    async def _lead_once(
        self, leadership: Leadership, view: _LeaderView, run: _LeaderRun, now: float
    ) -> float | None:
        """One pass of the leader: write the next generation if one is due. Returns how
        long to wait at most before the next pass (None: until something changes)."""
        keys = self.keys
        registered = members_from(keys, view.workers.items)
        members = self._with_reserved(registered, run.registered_before, run.reserved, now)
        run.registered_before = registered
        if members != run.last_seen:
            run.last_seen, run.last_change = members, now
        delay = self._until_quiet(run, members, view, now)
        frozen = view.maintenance.items.get(keys.maintenance) is not None
        self._log_maintenance(run, frozen, members)
        cfg_kv = view.config.items.get(keys.config)
        if frozen:
            return None  # woken by the maintenance key's removal
        if cfg_kv is None:
            if not run.config_missing_logged:
                log.warning(
                    "%s: no %s yet; run `shardctl shards set N`",
                    self.options.coordinator_id,
                    keys.config,
                )
                run.config_missing_logged = True
            return delay
        if delay is not None:
            return delay
        cfg = ClusterConfig.decode(cfg_kv.key, cfg_kv.value)
        seen = Current.of(view.current.items.get(keys.assignment))
        if seen.assignment is not None:
            COORD_GENERATION.set(seen.assignment.generation)
        due = members != run.applied or self._settled(seen.assignment, view.owners.items)
        if due and await self._write(leadership, seen, members, cfg):
            run.applied, run.pending_since = members, float("inf")
        return None

    def _until_quiet(
        self, run: _LeaderRun, members: dict[str, Member], view: _LeaderView, now: float
    ) -> float | None:
        """How long the member set must stay quiet before a change of it is applied
        (`stabilization_s`, at most 10 x that in a row); None if it may be now."""
        if run.applied is None or members == run.applied:
            return None
        run.pending_since = min(run.pending_since, run.last_change)
        quiet = now - run.last_change
        stab = self.options.stabilization_s
        orphaned = self._orphaned(run.applied, members, view.current.items)
        if quiet < stab and now - run.pending_since < 10 * stab and not orphaned:
            return stab - quiet
        return None

    def _log_maintenance(self, run: _LeaderRun, frozen: bool, members: dict[str, Member]) -> None:
        me = self.options.coordinator_id
        if frozen != run.frozen_logged:
            run.frozen_logged = frozen
            log.warning(
                "%s: maintenance mode is %s",
                me,
                f"on ({self.keys.maintenance} exists): the assignment is frozen, no "
                "shard moves until `shardctl maintenance off`"
                if frozen
                else "off: assigning again",
            )
        if frozen and members != run.frozen_members:
            run.frozen_members = members
            log.warning(
                "%s: maintenance mode: members are now [%s]; the assignment stays frozen",
                me,
                ", ".join(sorted(members)),
            )

    async def _watch_leadership(self, leadership: Leadership, deposed: asyncio.Event) -> None:
        reason = await leadership.wait_lost()
        log.error(
            "%s: leadership lost: %s",
            self.options.coordinator_id,
            reason,
            extra={"coordinator": self.options.coordinator_id},
        )
        deposed.set()

    def _with_reserved(
        self,
        registered: dict[str, Member],
        before: dict[str, Member],
        reserved: dict[str, tuple[float, Member]],
        now: float,
    ) -> dict[str, Member]:
        """The members to assign to: the registered ones, plus the workers that died
        within their restart grace (updates `reserved`)."""
        me = self.options.coordinator_id
        for wid, member in before.items():
            if wid not in registered and member.restart_grace_s > 0 and not member.draining:
                reserved[wid] = (now + member.restart_grace_s, member)
                log.warning(
                    "%s: worker %s left while active; its shards stay reserved for %gs "
                    "(restart grace)",
                    me,
                    wid,
                    member.restart_grace_s,
                )
        for wid, (deadline, _member) in list(reserved.items()):
            if wid in registered:
                del reserved[wid]
                log.info("%s: worker %s is back within its restart grace", me, wid)
            elif deadline <= now:
                del reserved[wid]
                log.warning("%s: restart grace of worker %s expired; its shards move", me, wid)
        return {**{wid: m for wid, (_d, m) in reserved.items()}, **registered}

    def _orphaned(
        self,
        applied: dict[str, Member],
        members: dict[str, Member],
        assignment_items: Mapping[str, KeyValue],
    ) -> bool:
        """Whether a member that left (lease gone) still has shards assigned: those
        shards have no owner, so waiting for quiet would only prolong the outage."""
        departed = set(applied) - set(members)
        if not departed:
            return False
        kv = assignment_items.get(self.keys.assignment)
        if kv is None:
            return False
        owners = Assignment.decode(kv.key, kv.value).owners
        return any(owner in departed for owner in owners)

    def _settled(self, assignment: Assignment | None, owners: Mapping[str, KeyValue]) -> bool:
        """Under a churn budget, wait for the previous generation's moves to complete."""
        if self.options.max_moves is None or assignment is None:
            return True
        for shard, owner in enumerate(assignment.owners):
            held = owners.get(self.keys.owner(shard))
            if owner is not None and (held is None or held.value != owner.encode()):
                return False
        return True

    async def _write(
        self,
        leadership: Leadership,
        seen: Current,
        members: dict[str, Member],
        cfg: ClusterConfig,
    ) -> bool:
        """Write the next generation if one is due. False if our view was stale."""
        new, unplaceable = compute_assignment(seen.assignment, members, cfg, self.options.max_moves)
        if unplaceable != self.unplaceable:
            self.unplaceable = unplaceable
            if unplaceable and not any(not m.draining for m in members.values()):
                # Not a placement problem: nobody serves yet (a start) or any more.
                log.warning(
                    "%s: no active worker; %d shard(s) stay unassigned until one registers",
                    self.options.coordinator_id,
                    len(unplaceable),
                )
            elif unplaceable:
                log.error(
                    "%s: no eligible worker for %d shard(s) %s (their affinity in %s "
                    "matches no active worker's labels); they stay unassigned",
                    self.options.coordinator_id,
                    len(unplaceable),
                    unplaceable,
                    self.keys.config,
                )
        if new is None:
            return True
        if not await write_assignment(leadership, self.keys, seen, new):
            return False  # someone wrote in between; recompute from the fresh view
        COORD_GENERATION.set(new.generation)
        COORD_REBALANCES.inc()
        COORD_MOVES.inc(moved_shards(seen.assignment, new))
        log.info(
            "%s: wrote generation %d (%d shards, %d members)",
            self.options.coordinator_id,
            new.generation,
            new.num_shards,
            len(members),
            extra={"coordinator": self.options.coordinator_id, "generation": new.generation},
        )
        return True
