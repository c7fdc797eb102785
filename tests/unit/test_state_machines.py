"""Every state machine drawn in a docstring is the one its code enforces."""

from __future__ import annotations

from enum import Enum
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cdc.reader
import coordinator.service
import workers.consumer
import workers.ownership
import workers.worker
from shardctl.core.states import IllegalTransition, Transitions, drawn_transitions

MACHINES: list[tuple[ModuleType, Transitions[Any], type[Enum]]] = [
    (workers.consumer, workers.consumer.SHARD_TRANSITIONS, workers.consumer.ShardState),
    (workers.ownership, workers.ownership.OWNER_TRANSITIONS, workers.ownership.OwnerState),
    (workers.worker, workers.worker.WORKER_TRANSITIONS, workers.worker.WorkerState),
    (
        coordinator.service,
        coordinator.service.COORDINATOR_TRANSITIONS,
        coordinator.service.CoordinatorState,
    ),
    (cdc.reader, cdc.reader.READER_TRANSITIONS, cdc.reader.ReaderState),
]


@pytest.mark.parametrize(("module", "table", "states"), MACHINES, ids=lambda m: str(m))
def test_the_docstring_draws_exactly_the_transitions_the_code_allows(
    module: ModuleType, table: Transitions[Any], states: type[Enum]
) -> None:
    drawn = drawn_transitions(module.__doc__)
    assert drawn == table.pairs(), (
        f"{module.__name__}: drawn but not allowed {sorted(drawn - table.pairs())}, "
        f"allowed but not drawn {sorted(table.pairs() - drawn)}"
    )
    named = {state.name for state in states}
    assert {name for pair in drawn for name in pair} == named, (
        f"{module.__name__}: a state is missing from the drawing or not an {states.__name__}"
    )


class Light(Enum):
    RED = 1
    GREEN = 2
    AMBER = 3


LIGHTS = Transitions(
    "light", {Light.RED: {Light.GREEN}, Light.GREEN: {Light.AMBER}, Light.AMBER: {Light.RED}}
)


@given(old=st.sampled_from(list(Light)), new=st.sampled_from(list(Light)))
def test_check_returns_the_new_state_or_refuses_naming_both(old: Light, new: Light) -> None:
    if (old.name, new.name) in LIGHTS.pairs():
        assert LIGHTS.check("crossing 4", old, new) is new
    else:
        with pytest.raises(IllegalTransition) as refused:
            LIGHTS.check("crossing 4", old, new)
        assert str(refused.value) == (
            f"light crossing 4: {old.name} --> {new.name} is not a legal transition"
        )


def test_drawn_transitions_reads_one_arrow_per_line_and_nothing_else() -> None:
    doc = """A machine.

        RED --timer--> GREEN
        GREEN --timer, or a button: the `walk` light--> AMBER
    prose mentioning RED and GREEN --> is not a transition
    """
    assert drawn_transitions(doc) == {("RED", "GREEN"), ("GREEN", "AMBER")}
