"""The read stage of the reader: binlog in, formatted messages out, in chunks and in
binlog order.

The stage reads the binlog (`BinlogSource`), decodes and filters the rows, keeps the
JSON-column model in step with the DDL it reads, and formats and partitions every
message (`Publisher`). The reader publishes what it yields, acknowledges, and moves
the checkpoint. It runs in one of two ways (`cdc.pipeline`):

- `two-process`: in a second process, so that reading, decoding and formatting use
  one core while publishing, delivery reports and checkpoints use the other.
- `one-process` (the default): in the reader's own process, as a generator.

Both yield the same items in the same order:

- `Chunk`: up to `CHUNK_MESSAGES` messages of one transaction, in order. `last` is
  set on the transaction's last chunk (which may hold no message); its `end` is
  then the checkpoint to register once all of it is delivered. Every chunk carries
  the transaction's context and end, so the first one tells the reader where the
  stream is. The last one also carries the transaction's statement (DDL), if any.
- `Heartbeat`: the source is idle and every transaction read so far was handed over.
- `Idle` (two-process only): nothing arrived for a moment; the reader does its
  periodic work. Unlike a heartbeat it says nothing about the stream.

Hand-off between the processes: one pipe, one send per chunk (messages pickle as
plain field tuples). The pipe holds little, so the child runs about one chunk
ahead of the reader and waits while the reader waits on the broker: memory stays
bounded. The child's log records travel on the same pipe and are logged by the
reader's handlers. An error in the child (an undecodable value, a purged binlog, a
session setting) is sent after every chunk before it, as the same exception, and
the child exits; the reader raises it at the same point of the stream as the
one-process stage would. The child ends with the reader: a send to a closed pipe
fails, it checks every 0.2 s that its parent is still there, and `close()` ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Literal

import pymysql

from cdc.decoding import BinlogDecoder
from cdc.decoding.json_columns import JsonSchemaModel
from cdc.decoding.native import NATIVE_IMPORT_ERROR, NativeOptions, native_available
from cdc.filtering import Filter
from cdc.formatter import MaxwellFormatter
from cdc.options import CdcOptions
from cdc.partitioner import Partitioner
from cdc.producers.base import Outgoing
from cdc.publisher import Publisher
from cdc.replication.decoding import FilteredDecoding
from cdc.replication.errors import SourceError
from cdc.replication.position import Checkpoint
from cdc.replication.source import BinlogSource, Heartbeat, SourceOptions
from cdc.replication.transaction import Statement, Transaction
from cdc.rows import TxnContext
from cdc.schema_model import SchemaModel
from shardctl.core.config import Settings
from shardctl.core.hashing import ShardHash
from shardctl.core.runtime import READ_STAGE_YOUNG_EVERY, collect_garbage_less_often

log = logging.getLogger(__name__)

# Messages per chunk: the unit of hand-off and of registration with the ack tracker.
CHUNK_MESSAGES = 1000
# How long the reader waits for the child before doing its periodic work.
_IDLE_S = 0.2
# How often the child checks that the reader is still there.
_PARENT_CHECK_S = 0.2

Pipeline = Literal["two-process", "one-process"]


@dataclass(slots=True)
class Chunk:
    """Messages of one transaction, in order; see the module docstring."""

    ctx: TxnContext
    end: Checkpoint
    messages: list[Outgoing]
    last: bool
    # On the last chunk: the transaction's statement (DDL), if it has one.
    statement: Statement | None = None


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing from the read stage for a moment (two-process stage only)."""


StageItem = Chunk | Heartbeat | Idle


@dataclass(frozen=True)
class StageSpec:
    """Everything the read stage is built from; picklable, for the child process.

    The reader settles the facts that need etcd or a query once, as it starts to
    lead, and both stages (and the bootstrap) build their publisher from this one
    spec, so that they format and partition alike. The message form and
    `kafka_partition_hash` are in `options`. After a change of the shard count the
    reader leads again with a new spec and a new stage."""

    settings: Settings
    options: CdcOptions
    start: Checkpoint
    num_shards: int
    shard_hash: ShardHash
    # The charset of a CREATE DATABASE that names none (the server's
    # character_set_server, as Maxwell writes it).
    server_charset: str


def recovery_command(source: str) -> str:
    return (
        f"shardctl cdc checkpoint reset --source {source} --to current\n"
        f"  shardctl cdc bootstrap <database>.<table> --source {source}   "
        "(for each table consumers need in full)"
    )


def build_publisher(
    spec: StageSpec,
    row_filter: Filter,
    decoding: FilteredDecoding | None,
    schema_model: SchemaModel | None = None,
) -> Publisher:
    """The formatter and partitioner of `spec`; `decoding` (when given) drops its
    cached facts about the tables a DDL statement changes."""
    options = spec.options
    return Publisher(
        MaxwellFormatter(options.formatter_options()),
        Partitioner(
            spec.num_shards,
            options.producer_partition_by,
            tuple(options.producer_partition_columns),
            options.producer_partition_by_fallback,
            hash_function=options.kafka_partition_hash,
            shard_hash=spec.shard_hash,
        ),
        row_filter,
        ddl_topic=options.ddl_kafka_topic,
        invalidate=decoding.invalidate if decoding is not None else None,
        server_charset=spec.server_charset,
        schema_model=schema_model,
    )


def native_options(options: CdcOptions, partitioner: Partitioner) -> NativeOptions | None:
    """The native decoder's options, or None when the Python decoder does all: with
    `decoder = python`, without the native module, or when shards are chosen from
    row values (partitioning by column, or Maxwell's hash of its partition string),
    which only the Python decoder keeps."""
    if options.decoder != "native":
        log.info("source %s: Python decoder for every table (decoder = python)", options.source)
        return None
    if not native_available():
        log.warning(
            "source %s: Python decoder for every table: the native decoder is not installed (%s)",
            options.source,
            NATIVE_IMPORT_ERROR,
        )
        return None
    if not partitioner.by_message_key:
        log.info(
            "source %s: Python decoder for every table: producer_partition_by = %s with "
            "kafka_partition_hash = %s reads row values",
            options.source,
            options.producer_partition_by,
            options.kafka_partition_hash,
        )
        return None
    return NativeOptions(
        null_zerodates=options.output_null_zerodates,
        decimal_as_string=options.decimal_as_string,
    )


def json_model_at(checkpoint: Checkpoint, connect: dict[str, Any], source: str) -> JsonSchemaModel:
    """Which LONGTEXT columns hold JSON as of `checkpoint` (it carries the model)."""
    connect_now = partial(pymysql.connect, **connect)
    if checkpoint.json_columns is not None:
        return JsonSchemaModel(checkpoint.json_columns, connect_now)
    log.warning(
        "source %s: the checkpoint carries no schema model (written by an older version "
        "or by checkpoint reset); JSON columns are taken from the server's current schema",
        source,
    )
    return JsonSchemaModel.from_server(connect_now)


def transaction_chunks(
    txn: Transaction, publisher: Publisher, json_model: JsonSchemaModel
) -> Iterator[Chunk]:
    """The transaction's messages, CHUNK_MESSAGES at a time, made as they are asked for
    (a spilled transaction is never all in memory). The last chunk's end carries the
    event id of the transaction's last message and the JSON-column model after it."""
    chunk: list[Outgoing] = []
    try:
        if txn.statement is not None:
            # The schema model follows the stream: this boundary and every later
            # event see the schema as this statement left it.
            json_model.apply_ddl(
                txn.statement.sql, txn.statement.database, f"{txn.ctx.file}:{txn.ctx.pos}"
            )
        for message in publisher.messages(txn):
            if len(chunk) == CHUNK_MESSAGES:
                yield Chunk(txn.ctx, txn.end, chunk, last=False)
                chunk = []
            chunk.append(message)
    finally:
        txn.close()
    end = dataclasses.replace(
        txn.end,
        event_id=chunk[-1].event_id if chunk else txn.end.event_id,
        json_columns=json_model.state,
    )
    yield Chunk(txn.ctx, end, chunk, last=True, statement=txn.statement)


class LocalStage:
    """The read stage in the reader's process."""

    def __init__(self, spec: StageSpec) -> None:
        collect_garbage_less_often(READ_STAGE_YOUNG_EVERY)
        options = spec.options
        connect = spec.settings.mysql.connect_kwargs()
        self._json_model = json_model_at(spec.start, connect, options.source)
        row_filter = Filter(options.filter)
        decoder = BinlogDecoder(self._json_model)
        decoding = FilteredDecoding(decoder, row_filter)
        # The `def`/`old` of DDL messages: read from information_schema as the stage starts.
        schema_model = (
            SchemaModel.from_server(partial(pymysql.connect, **connect))
            if options.output_ddl
            else None
        )
        self._publisher = build_publisher(spec, row_filter, decoding, schema_model)
        decoder.use_native(native_options(options, self._publisher.partitioner))
        self._source = BinlogSource(
            SourceOptions(
                source=options.source,
                connect=connect,
                server_id=options.server_id,
                mode=options.mode,
                heartbeat_s=options.heartbeat_s,
                recovery_command=recovery_command(options.source),
                transaction_memory_rows=options.transaction_memory_rows,
                transaction_memory_bytes=options.transaction_memory_bytes,
                spill_dir=options.spill_dir,
                row_query=options.output_row_query,
            ),
            decoding,
            spec.start,
        )

    def __iter__(self) -> Iterator[StageItem]:
        for item in self._source:
            if isinstance(item, Transaction):
                yield from transaction_chunks(item, self._publisher, self._json_model)
            else:
                yield item

    def close(self) -> None:
        self._source.close()


# --- the two-process stage -------------------------------------------------------

_CHUNK, _HEARTBEAT, _LOG, _ERROR = "chunk", "heartbeat", "log", "error"


class _PipeQueue:
    """What `logging.handlers.QueueHandler` needs of a queue: records go down the pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._conn.send((_LOG, record.__dict__))


def _exception_state(
    exc: BaseException,
) -> tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]:
    return type(exc), exc.args, dict(vars(exc))


def _rebuilt(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """The exception as the child raised it, without calling its __init__ again
    (many take other arguments than the message they store)."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as the reader is gone (killed with SIGKILL, say): a
    read stage left behind would keep reconnecting with the source's server_id and
    cut off the next reader's connection."""
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


def _child_main(conn: Connection, log_level: int, parent: int) -> None:
    # The reader decides when this process ends; a terminal's ^C goes to it alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(_PipeQueue(conn))]  # type: ignore[arg-type]
    root.setLevel(log_level)
    stage: LocalStage | None = None
    try:
        spec: StageSpec = conn.recv()  # sent once the reader leads
        stage = LocalStage(spec)
        for item in stage:
            if isinstance(item, Chunk):
                conn.send((_CHUNK, item.ctx, item.end, item.messages, item.last, item.statement))
            else:
                conn.send((_HEARTBEAT,))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the reader is gone
    except BaseException as exc:  # noqa: BLE001 - every error goes to the reader
        text = traceback.format_exc()
        with contextlib.suppress(OSError):  # the reader is gone
            try:
                conn.send((_ERROR, *_exception_state(exc), text))
            except (pickle.PicklingError, TypeError, AttributeError):
                # Not picklable as it is: the same text, as a SourceError.
                conn.send((_ERROR, SourceError, (f"{type(exc).__name__}: {exc}",), {}, text))
    finally:
        if stage is not None:
            with contextlib.suppress(Exception):
                stage.close()
        conn.close()


class ProcessStage:
    """The read stage in a child process (spawned: the reader holds threads).

    The process is started before the reader leads (it takes a moment to import
    everything) and waits; `start` hands it the checkpoint to read from."""

    def __init__(self, source: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_child_main,
            args=(child_conn, logging.getLogger().getEffectiveLevel(), os.getpid()),
            name=f"cdc-{source}-read",
            daemon=True,
        )
        self._process.start()
        child_conn.close()

    def start(self, spec: StageSpec) -> ProcessStage:
        self._conn.send(spec)
        return self

    def __iter__(self) -> Iterator[StageItem]:
        conn = self._conn
        while True:
            if not conn.poll(_IDLE_S):
                if not self._process.is_alive() and not conn.poll():
                    raise self._gone()
                yield Idle()
                continue
            try:
                item = conn.recv()
            except EOFError:
                self._process.join(5)
                raise self._gone() from None
            kind = item[0]
            if kind == _CHUNK:
                yield Chunk(item[1], item[2], item[3], item[4], item[5])
            elif kind == _HEARTBEAT:
                yield Heartbeat()
            elif kind == _LOG:
                record = logging.makeLogRecord(item[1])
                logging.getLogger(record.name).handle(record)
            else:
                _, cls, args, state, text = item
                exc = _rebuilt(cls, args, state)
                exc.add_note(f"raised in the read stage process:\n{text}")
                raise exc

    def _gone(self) -> SourceError:
        return SourceError(
            f"the read stage process exited with code {self._process.exitcode} without saying why"
        )

    def close(self) -> None:
        self._conn.close()
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)


def prepare_stage(options: CdcOptions) -> ProcessStage | None:
    """The read stage's process, started ahead of leadership (two-process only)."""
    return ProcessStage(options.source) if options.pipeline == "two-process" else None


def start_stage(spec: StageSpec, prepared: ProcessStage | None) -> LocalStage | ProcessStage:
    if prepared is not None:
        return prepared.start(spec)
    if spec.options.pipeline == "one-process":
        return LocalStage(spec)
    return ProcessStage(spec.options.source).start(spec)
