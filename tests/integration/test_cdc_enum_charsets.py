"""ENUM and SET members in other character sets, read from the real MariaDB.

The rule (issue 17, item 1; P7): a member name is decoded from the TABLE_MAP's
ENUM_STR_VALUE / SET_STR_VALUE bytes with the column's own character set, so
the value published is the member as written in the DDL. A member is never
published as "" unless it is the empty member; a member that cannot be decoded
stops the reader with the binlog position, the table and the column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import TableMapEvent, WriteRowsEvent

from cdc.decoding import BinlogDecoder, DecodeError
from tests.conftest import StackHandle
from tests.integration.cdc_support import ReaderProcess, reader_env

pytestmark = pytest.mark.integration


def _execute(stack: StackHandle, statements: list[str], names: str = "utf8mb4") -> None:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET NAMES {names}")
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _master_status(stack: StackHandle) -> tuple[str, int]:
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            file, pos = cur.fetchone()[:2]
    finally:
        conn.close()
    return str(file), int(pos)


def _events(stack: StackHandle, db: str, start: tuple[str, int]) -> Iterator[Any]:
    end = _master_status(stack)
    stream = BinLogStreamReader(
        connection_settings={
            "host": stack.mysql_host,
            "port": stack.mysql_port,
            "user": "root",
            "password": "",
        },
        server_id=910000 + int.from_bytes(db.encode()[-3:], "big") % 80000,
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        only_events=[TableMapEvent, WriteRowsEvent],
        only_schemas=[db],
    )
    try:
        for event in stream:
            yield event
            if (stream.log_file, stream.log_pos) >= end:
                break
    finally:
        stream.close()


def _decoded_rows(stack: StackHandle, db: str, start: tuple[str, int]) -> list[dict[str, Any]]:
    decoder = BinlogDecoder()
    rows: list[dict[str, Any]] = []
    for event in _events(stack, db, start):
        if isinstance(event, TableMapEvent):
            decoder.on_table_map(event, start[0])
        else:
            _, images = decoder.decode(event, start[0])
            rows.extend(image.data for image in images)
    return rows


# (column definition, inserted value, expected published value). The expected
# values are the members as written in the DDL: Maxwell publishes an ENUM as the
# member's text and a SET as the list of member texts, in definition order.
CASES: dict[str, tuple[str, str, Any]] = {
    "e_latin1": ("ENUM('café','Ä','') CHARACTER SET latin1", "café", "café"),
    "e_latin1_b": ("ENUM('café','Ä','') CHARACTER SET latin1", "Ä", "Ä"),
    "e_latin1_empty": ("ENUM('café','Ä','') CHARACTER SET latin1", "", ""),
    "s_latin1": ("SET('café','Ä','x') CHARACTER SET latin1", "café,Ä", ["café", "Ä"]),
    "e_cp1251": ("ENUM('привет','мир') CHARACTER SET cp1251", "мир", "мир"),
    "s_cp1251": ("SET('привет','мир','ё') CHARACTER SET cp1251", "привет,ё", ["привет", "ё"]),
    "e_binary": ("ENUM('café','b') CHARACTER SET binary", "café", "café"),
    "s_binary": ("SET('é','b') CHARACTER SET binary", "é,b", ["é", "b"]),
}


def test_enum_and_set_members_keep_their_text_in_every_charset(
    stack: StackHandle, mysql_db: str
) -> None:
    start = _master_status(stack)
    columns = ", ".join(f"{name} {ddl} NULL" for name, (ddl, _, _) in CASES.items())
    names = ", ".join(CASES)
    values = ", ".join(f"'{value}'" for _, value, _ in CASES.values())
    _execute(
        stack,
        [
            f"CREATE TABLE `{mysql_db}`.members (id INT PRIMARY KEY, {columns}) "
            "DEFAULT CHARSET=utf8mb4",
            f"INSERT INTO `{mysql_db}`.members (id, {names}) VALUES (1, {values})",
        ],
    )
    rows = _decoded_rows(stack, mysql_db, start)
    expected = {"id": 1, **{name: want for name, (_, _, want) in CASES.items()}}
    assert rows == [expected]


def test_a_member_that_does_not_decode_stops_the_reader_naming_it(
    stack: StackHandle, mysql_db: str
) -> None:
    start = _master_status(stack)
    # A binary-charset member is published as the UTF-8 text it holds; the byte
    # 0xE9 alone is not UTF-8, so there is no text to publish.
    _execute(
        stack,
        [
            f"CREATE TABLE `{mysql_db}`.raw (id INT PRIMARY KEY, "
            "ok ENUM('a') NULL, bad ENUM(X'E9', 'b') CHARACTER SET binary NULL)",
            f"INSERT INTO `{mysql_db}`.raw VALUES (1, 'a', 'b')",
        ],
    )
    with pytest.raises(DecodeError) as caught:
        _decoded_rows(stack, mysql_db, start)
    error = caught.value
    assert error.table == f"{mysql_db}.raw"
    assert error.column == "bad"
    file, _, pos = error.position.partition(":")
    assert file == start[0] and int(pos) >= start[1]
    assert "member 1" in error.reason and "binary" in error.reason


def test_the_running_reader_stops_on_an_undecodable_member(
    stack: StackHandle, mysql_db: str, unique: str, tmp_path: Path
) -> None:
    # From a position taken before the table exists: a reader that finds no checkpoint
    # starts at the binlog's head only after it leads, which on a loaded machine can be
    # after the statements below.
    file, pos = _master_status(stack)
    env = reader_env(
        stack, unique, "main", producer="stdout", num_shards=1, start_position=f"{file}:{pos}"
    )
    reader = ReaderProcess(env, tmp_path, "r1")
    try:
        _execute(
            stack,
            [
                f"CREATE TABLE `{mysql_db}`.raw (id INT PRIMARY KEY, "
                "bad ENUM(X'E9', 'b') CHARACTER SET binary NULL)",
                f"INSERT INTO `{mysql_db}`.raw VALUES (1, 'b')",
            ],
        )
        assert reader.wait(60) == 1
    finally:
        if reader.proc.poll() is None:
            reader.kill9()
    err = reader.stderr()
    assert f"table {mysql_db}.raw, column 'bad'" in err
    assert "cannot decode row (binlog binlog." in err
    assert "Traceback" not in err
    assert '"bad"' not in (tmp_path / "r1.out").read_text()
