"""The optional PostgreSQL service of the local stack, for the PostgreSQL sink tests:
started through devstack on first use, and a database of each test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from shardctl.cli.dev import load_devstack
from tests.conftest import StackHandle


def postgres_up(stack: StackHandle) -> dict[str, Any]:
    """Start the stack's PostgreSQL if needed; its superuser connection arguments."""
    real = stack._stack
    real.up(["postgres"], echo=lambda _msg: None)
    args: dict[str, Any] = load_devstack().Postgres(real).connect_args()
    return args


def pg_query(args: dict[str, Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(**args, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description is not None else []


@contextmanager
def fresh_database(stack: StackHandle, name: str) -> Iterator[dict[str, Any]]:
    """A new database `name`, dropped afterwards; yields connection arguments for it."""
    admin = postgres_up(stack)
    pg_query(admin, f'CREATE DATABASE "{name}"')
    try:
        yield {**admin, "dbname": name}
    finally:
        pg_query(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_effects(args: dict[str, Any], table: str) -> None:
    """A table `effects` whose one row counts every row written to `table` by a trigger:
    a duplicate effect cannot hide."""
    pg_query(args, "CREATE TABLE effects (n INT NOT NULL)")
    pg_query(args, "INSERT INTO effects VALUES (0)")
    pg_query(
        args,
        "CREATE FUNCTION count_effect() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN UPDATE effects SET n = n + 1; RETURN NULL; END $$",
    )
    pg_query(
        args,
        f"CREATE TRIGGER count_effect AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION count_effect()",
    )
