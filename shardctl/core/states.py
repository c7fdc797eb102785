"""Explicit state machines: an Enum of states and one table of the legal transitions.

A machine's module draws it in its docstring, one transition per line:

    RUNNING --stop--> STOPPING

and declares the same transitions as a `Transitions` table, so a unit test can hold
the drawing and the code to each other (`drawn_transitions`). `Transitions.check`
is the one place that moves a subject from one state to another: it refuses a move
the table does not allow with IllegalTransition, naming the machine, the subject and
both states, as kazoo's SetPartitioner refuses a call made in the wrong state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)

_ARROW = re.compile(r"^\s*([A-Z][A-Z_]*) --.*--> ([A-Z][A-Z_]*)\b")


class IllegalTransition(RuntimeError):
    """A move the machine's table does not allow: a bug, never a runtime condition."""


class Transitions(Generic[S]):
    """The legal transitions of one machine: state -> the states it may move to."""

    def __init__(self, name: str, table: Mapping[S, Iterable[S]]) -> None:
        self.name = name
        self.table: dict[S, frozenset[S]] = {old: frozenset(new) for old, new in table.items()}

    def allows(self, old: S, new: S) -> bool:
        return new in self.table.get(old, frozenset())

    def check(self, subject: str, old: S, new: S) -> S:
        """Return `new` if `old` may move to it; else raise IllegalTransition."""
        if not self.allows(old, new):
            raise IllegalTransition(
                f"{self.name} {subject}: {old.name} --> {new.name} is not a legal transition"
            )
        return new

    def pairs(self) -> set[tuple[str, str]]:
        """Every legal transition as (old, new) state names."""
        return {(old.name, new.name) for old, news in self.table.items() for new in news}


def drawn_transitions(docstring: str | None) -> set[tuple[str, str]]:
    """The transitions drawn as `OLD --event--> NEW` lines in a docstring."""
    found: set[tuple[str, str]] = set()
    for line in (docstring or "").splitlines():
        match = _ARROW.match(line)
        if match:
            found.add((match.group(1), match.group(2)))
    return found
