"""etcd primitives for shardctl. Only `shardctl.core.etcd.client` talks to the etcd library.

Public API (stable; everything is asyncio unless marked blocking):

client.py
    EtcdClient(settings: EtcdSettings)          one connection; `await c.connect()` or
                                                `async with EtcdClient(s) as c`
      get(key) -> KeyValue | None
      get_prefix(prefix) -> Listing             (items sorted by key, read revision)
      put(key, value: bytes, lease=0) -> revision
      delete(key) -> bool, delete_prefix(prefix ending in '/') -> count
      txn(guards, ops, read_back=()) -> (succeeded, {key: KeyValue | None})
      create_if_absent(key, value, lease=0) -> CreateResult(created, kv)
      grant_lease / refresh_lease / revoke_lease, lease_ttl (-1 once gone),
      compact(revision=None)
    Ops: Put(key, value, lease=0), Delete(key)
    Guards: CreateRevisionIs(key, rev), Absent(key), ValueIs(key, value), ModRevisionIs
    Errors: EtcdError (names op and key) > EtcdUnavailable (retry later), EtcdAuthError,
            RevisionCompacted

session.py
    Session.open(settings, ttl, name) -> Session          (blocking: open_blocking)
      lease_id, ttl, is_lost, lost_reason, is_valid() (checks the TTL deadline itself,
      so a resumed zombie sees False at once), check() (raises SessionLost),
      on_lost(callback), await wait_lost() -> reason,
      close(revoke=True)                                  (blocking: close_blocking)
    The keepalive runs on its own thread and connection; a busy caller cannot starve
    it. Loss is final; a new lease is a new Session.
    open_session(settings, ttl, name, stop) -> Session | None   retries while etcd is
      unavailable; None once `stop` (an asyncio.Event) is set
    revoke_stale_lease(client, lease_id, session, stop) -> bool  revoke an earlier
      session's lease whose revoke failed (close() returned False)

fence.py
    Fence(key, token): the one fence, `create_revision(key) == token` (etcd's IsOwner)
      guard() -> CreateRevisionIs
      txn(client, ops, guards=()) -> Fenced(written, found, token): .holds, .describe()
      release(client) -> bool                 delete the key if still that incarnation
    Used by leader writes, offset commits and owner-key release.

(the retry schedule, `Backoff`, is shardctl.core.backoff's: every etcd retry uses it)

election.py
    Election(client, key)
      campaign(session, candidate) -> Leadership          blocks until elected
      leader() -> LeaderInfo(candidate, token, lease) | None
    Leadership: token (= create_revision of the election key), fence
      guarded_put(key, value), guarded_txn(ops)           raise NotLeader once deposed
      wait_lost() -> reason, resign()

watch.py
    watch_updates(client, key, prefix=bool) -> async iterator of WatchUpdate
    watch_key(client, key) -> async iterator of KeyValue | None
    Mirror(client, key, prefix=True).start(): .items, .ready, .changed, .stop()
    Watches resume after an etcd restart and list again after a compaction.

loop_thread.py
    LoopThread(name): run(coro) (blocking) / run_async(coro) / stop(). Lets blocking
    code use this API: keep one EtcdClient per LoopThread.

Example, a fenced checkpoint writer:

    async with EtcdClient(settings.etcd) as etcd:
        session = await Session.open(settings.etcd, ttl=10, name="reader-1")
        lead = await Election(etcd, keys.cdc_leader("src")).campaign(session, "reader-1")
        await lead.guarded_put(keys.cdc_checkpoint("src"), b"mysql-bin.000003:4")
"""

from shardctl.core.backoff import Backoff
from shardctl.core.etcd.client import (
    Absent,
    CreateResult,
    CreateRevisionIs,
    Delete,
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Listing,
    ModRevisionIs,
    Put,
    RevisionCompacted,
    ValueIs,
    WatchEvent,
)
from shardctl.core.etcd.election import Election, LeaderInfo, Leadership, NotLeader
from shardctl.core.etcd.fence import Fence, Fenced
from shardctl.core.etcd.loop_thread import LoopThread
from shardctl.core.etcd.session import Session, SessionLost, open_session, revoke_stale_lease
from shardctl.core.etcd.watch import Mirror, WatchUpdate, watch_key, watch_updates

__all__ = [
    "Absent",
    "Backoff",
    "CreateResult",
    "CreateRevisionIs",
    "Delete",
    "Election",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Fence",
    "Fenced",
    "KeyValue",
    "LeaderInfo",
    "Leadership",
    "Listing",
    "LoopThread",
    "Mirror",
    "ModRevisionIs",
    "NotLeader",
    "Put",
    "RevisionCompacted",
    "Session",
    "SessionLost",
    "ValueIs",
    "WatchEvent",
    "WatchUpdate",
    "open_session",
    "revoke_stale_lease",
    "watch_key",
    "watch_updates",
]
