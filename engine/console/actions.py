"""Which actions a workflow's state allows, and which of them an operator may take (pure, no I/O).

The console offers a button only where both hold; the server checks the same rule again on every POST
(and the engine checks its own: the state, and that an approver never decides their own submission), so a
hidden button is a courtesy, never the protection. The actions are the engine's own: ``cancel`` for any
workflow not yet terminal, and the resolutions the workflow's kind accepts in its state. A resolution that
needs a second pair of eyes (the kind's ``four_eyes``) needs the approve permission; any other decision
needs the resolve permission; every decision needs a note.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.kinds import WorkflowKind
from engine.models import Workflow
from engine.operators import MAX_NOTE_LENGTH, Operator, Permission

__all__ = ["CANCEL", "Action", "available", "permission_for", "resolutions_in"]

#: The cancel action's name (a route of its own, not a resolution).
CANCEL = "cancel"
#: Longest note accepted with an action (the engine's rule: engine.operators.check_note).
MAX_NOTE = MAX_NOTE_LENGTH


@dataclass(frozen=True, slots=True)
class Action:
    """One action the page may offer: its name, whether the operator may take it, and why not."""

    name: str
    permission: Permission
    allowed: bool
    note_required: bool
    refusal: str | None = None


def resolutions_in(kind: WorkflowKind, state: str) -> tuple[str, ...]:
    """The resolutions the kind accepts in ``state`` (none outside the states awaiting an operator)."""
    return tuple(kind.resolutions_in(state))


def permission_for(kind: WorkflowKind, action: str) -> Permission:
    """The permission an action needs: cancel, approve (four-eyes decisions) or resolve (the others)."""
    if action == CANCEL:
        return Permission.CANCEL
    return Permission.APPROVE if kind.is_four_eyes(action) else Permission.RESOLVE


def available(kind: WorkflowKind, wf: Workflow, operator: Operator, *, created_by: str | None) -> list[Action]:
    """The actions ``wf``'s state allows, each marked with whether ``operator`` may take it."""
    found: list[Action] = []
    if not kind.is_terminal(wf.state) and not wf.cancel_requested:
        found.append(_action(kind, CANCEL, operator, created_by, note_required=False))
    if wf.resolution is None:
        found.extend(_action(kind, name, operator, created_by) for name in resolutions_in(kind, wf.state))
    return found


def _action(
    kind: WorkflowKind, name: str, operator: Operator, created_by: str | None, *, note_required: bool = True
) -> Action:
    permission = permission_for(kind, name)
    refusal = None
    if not operator.can(permission):
        refusal = f"your role ({operator.role}) may not {name}"
    elif permission is Permission.APPROVE and created_by is not None and created_by == operator.name:
        refusal = f"you submitted this: another approver must {name} it"
    return Action(name, permission, refusal is None, note_required, refusal)
