"""Pure parts of the operator commands: the grant check of `shardctl doctor` and the
coordinator's count of moved shards."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.service import moved_shards
from shardctl.cli.doctor import missing_privileges
from shardctl.core.records import Assignment

USER = "TO `shardctl_cdc`@`127.0.0.1`"


def test_mariadb_grants_of_the_dev_stack_are_enough() -> None:
    lines = [
        f"GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* {USER} "
        "IDENTIFIED BY PASSWORD '*0123456789ABCDEF'"
    ]
    assert missing_privileges(lines) == ([], [])


def test_mysql_spelling_and_all_privileges_are_enough() -> None:
    mysql = [f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* {USER}"]
    assert missing_privileges(mysql) == ([], [])
    assert missing_privileges([f"GRANT ALL PRIVILEGES ON *.* {USER}"]) == ([], [])


def test_each_missing_privilege_is_named() -> None:
    missing, warnings = missing_privileges([f"GRANT USAGE ON *.* {USER}"])
    assert missing == [
        "REPLICATION SLAVE",
        "REPLICATION CLIENT (MariaDB: BINLOG MONITOR)",
        "SELECT",
    ]
    assert warnings == []


def test_select_on_one_database_is_a_warning_not_a_problem() -> None:
    lines = [
        f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* {USER}",
        f"GRANT SELECT ON `shop`.* {USER}",
    ]
    missing, warnings = missing_privileges(lines)
    assert missing == []
    assert len(warnings) == 1 and "shop.*" in warnings[0]


def test_grant_lines_with_a_password_hash_are_never_echoed() -> None:
    secret = "*DEADBEEFDEADBEEF"
    missing, warnings = missing_privileges(
        [f"GRANT USAGE ON *.* {USER} IDENTIFIED BY PASSWORD '{secret}'"]
    )
    assert all(secret not in text for text in [*missing, *warnings])


def test_first_assignment_moves_nothing() -> None:
    new = Assignment(generation=1, num_shards=3, owners=["a", "a", "b"])
    assert moved_shards(None, new) == 0


def test_a_join_moves_only_reassigned_shards() -> None:
    old = Assignment(generation=1, num_shards=4, owners=["a", "a", "a", "a"])
    new = Assignment(generation=2, num_shards=4, owners=["a", "b", "a", "b"])
    assert moved_shards(old, new) == 2


def test_orphans_taken_over_are_not_moves() -> None:
    old = Assignment(generation=1, num_shards=2, owners=[None, "a"])
    new = Assignment(generation=2, num_shards=2, owners=["b", "a"])
    assert moved_shards(old, new) == 0


owners = st.lists(st.sampled_from([None, "a", "b", "c"]), min_size=1, max_size=40)


@given(owners, owners)
def test_moves_count_exactly_the_shards_that_change_hands(
    before: list[str | None], after: list[str | None]
) -> None:
    size = min(len(before), len(after))
    old = Assignment(generation=1, num_shards=size, owners=before[:size])
    new = Assignment(generation=2, num_shards=size, owners=after[:size])
    expected = sum(1 for x, y in zip(before[:size], after[:size], strict=True) if x and x != y)
    assert moved_shards(old, new) == expected
    assert moved_shards(old, old) == 0
