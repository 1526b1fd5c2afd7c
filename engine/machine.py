"""Glue to ``transitions``: one machine per workflow kind, built once, fired on light models.

Why this shape (style.md §6): a ``Machine`` per withdrawal costs ~24 KiB and milliseconds to build, and
``add_model`` is quadratic and leaks. Instead the table is declared as data in ``workflows/``, compiled
into ONE core (synchronous) ``transitions.Machine`` with ``auto_transitions=False`` and no models, and each
trigger is fired with ``machine.events[name].trigger(model)`` on a throwaway model rebuilt from the stored
workflow. Callbacks are synchronous and pure (guards only), so the async machine's traps (swallowed
cancellation, triggers cancelling each other) cannot occur; serialisation per workflow is the runner's job
(it holds the lease while stepping).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transitions import Machine, MachineError

from engine.errors import GuardRejected, InvalidTransition
from engine.models import Workflow

__all__ = ["Guard", "TransitionSpec", "WorkflowMachine"]

#: A guard sees the workflow and the trigger's data and says whether the transition may happen.
Guard = Callable[[Workflow, Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """One row of a transition table: ``trigger`` moves ``source`` states to ``dest`` if ``guard``.

    ``dest=None`` is an internal transition: the state stays, an event is still written (a note).
    """

    trigger: str
    source: tuple[str, ...]
    dest: str | None
    guard: Guard | None = None


class _Model:
    """What ``transitions`` fires on: the state, plus the workflow for guards. Never stored."""

    __slots__ = ("state", "workflow")

    def __init__(self, workflow: Workflow) -> None:
        self.state = workflow.state
        self.workflow = workflow


def _guard_callback(guard: Guard) -> Callable[[Any], bool]:
    def check(event_data: Any) -> bool:
        return guard(event_data.model.workflow, event_data.kwargs)

    return check


class WorkflowMachine:
    """A compiled transition table for one workflow kind."""

    def __init__(
        self,
        kind: str,
        states: Iterable[str],
        table: Sequence[TransitionSpec],
        *,
        initial: str | None = None,
        terminal: Iterable[str] = (),
    ) -> None:
        self.kind = kind
        self.states = tuple(states)
        self.initial = initial if initial is not None else self.states[0]
        self.terminal = frozenset(terminal)
        self.table = tuple(table)
        self._machine = Machine(
            model=None,
            states=list(states),
            transitions=[self._compile(spec) for spec in self.table],
            initial=None,
            auto_transitions=False,
            send_event=True,
            queued=False,
        )

    @staticmethod
    def _compile(spec: TransitionSpec) -> dict[str, Any]:
        compiled: dict[str, Any] = {"trigger": spec.trigger, "source": list(spec.source), "dest": spec.dest}
        if spec.guard is not None:
            compiled["conditions"] = [_guard_callback(spec.guard)]
        return compiled

    def __repr__(self) -> str:
        return f"<WorkflowMachine {self.kind}: {len(self.triggers)} triggers, {len(self.table)} transitions>"

    @property
    def triggers(self) -> frozenset[str]:
        """All trigger names."""
        return frozenset(spec.trigger for spec in self.table)

    def fire(self, workflow: Workflow, trigger: str, **data: Any) -> str:
        """The state ``trigger`` leads to from ``workflow.state``; raises if not allowed."""
        event = self._machine.events.get(trigger)
        if event is None:
            raise InvalidTransition(f"unknown trigger {trigger!r} for {self.kind}")
        model = _Model(workflow)
        try:
            moved = event.trigger(model, **data)
        except MachineError:
            raise InvalidTransition(
                f"{trigger!r} is not allowed from {str(workflow.state)!r} ({workflow.id})"
            ) from None
        if not moved:
            raise GuardRejected(f"{trigger!r} from {str(workflow.state)!r} refused by its guard ({workflow.id})")
        state: str = model.state
        return state

    def allowed(self, state: str) -> list[str]:
        """Triggers that have a transition from ``state`` (guards not evaluated)."""
        return sorted({spec.trigger for spec in self.table if state in spec.source})

    def mermaid(self) -> str:
        """The table as a mermaid ``stateDiagram-v2`` (for the README)."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for spec in self.table:
            if spec.dest is None:
                continue
            for source in spec.source:
                lines.append(f"    {source} --> {spec.dest}: {spec.trigger}")
        lines.extend(f"    {s} --> [*]" for s in self.states if s in self.terminal)
        return "\n".join(lines)
