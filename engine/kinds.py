"""The engine/workflow seam: a workflow kind is one value, and the engine knows kinds only through it.

The engine (runner, context, stores, core, API, CLI) never names a workflow's states, triggers or data
keys. Everything it needs to decide about a workflow it asks the workflow's :class:`WorkflowKind`: which
step runs in a state, whether a state is terminal or waits for an operator (so the workflow counts as
*settled*), whether a commit is urgent (someone holds a scarce resource until it is durable), whether a
workflow is past its deadline and how it then ends, which operator actions it accepts, and how its
request is parsed, stored and shown. ``engine.bootstrap`` builds the :class:`KindRegistry` of the kinds a
process runs (the withdrawal today) and hands it to the engine and the stores.

Why per-state sets rather than per-row columns: the stores persist only generic facts; where SQL needs a
per-state rule (which rows are terminal, which accept a resolution) the kind's states are passed to it as
parameters (``kind:state`` pairs, :meth:`KindRegistry.pairs`), so adding a state never touches SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidRequest
from engine.machine import WorkflowMachine
from engine.models import Event, Workflow, new_workflow_id

if TYPE_CHECKING:
    from engine.policy import WorkflowSettings
    from engine.port import StepPort

__all__ = [
    "KindRegistry",
    "RowIndex",
    "Step",
    "WorkflowKind",
    "default_kinds",
    "new_workflow",
]

#: A step: given a workflow due in its state, do I/O and move it (returns the stored result).
Step = Callable[[Workflow, "StepPort"], Awaitable[Workflow]]
#: The workflow is past its deadline now (checked by the runner before every step).
DeadlineRule = Callable[[Workflow, datetime], bool]
#: How a workflow past its deadline ends (a transition through the context).
Expiry = Callable[[Workflow, "StepPort"], Awaitable[Workflow]]


@dataclass(frozen=True, slots=True)
class RowIndex:
    """The generic, indexed columns a request fills in a store row.

    The withdrawal fills them all (the lane's unique index and the daily-limit sum read them); a kind
    without them keeps the neutral defaults (it never holds a lane, and sums nothing)."""

    account: str = ""
    currency: str = ""
    amount: str = "0"
    lane: str = ""
    #: The network, where the kind has one (a list filter reads it).
    net_type: str | None = None


def _never(_wf: Workflow, _now: datetime) -> bool:
    return False


async def _no_expiry(wf: Workflow, _ctx: StepPort) -> Workflow:  # pragma: no cover - _never never fires
    return wf


def _no_view(wf: Workflow) -> dict[str, Any]:
    return {"id": wf.id, "kind": wf.kind, "state": str(wf.state)}


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowKind:
    """One workflow kind: its request model, transition machine, steps and the predicates the engine needs.

    ``states`` is every state name; ``initial`` the state a new workflow starts in. ``parse_state`` turns
    a stored state name back into the kind's own value (a ``StrEnum`` member, so the kind's code may
    compare with ``is``); the engine treats states as plain strings.
    """

    name: str
    request_type: type
    states: tuple[str, ...]
    initial: str
    parse_state: Callable[[str], str]
    parse_request: Callable[[Mapping[str, Any]], Any]
    dump_request: Callable[[Any], dict[str, Any]]
    same_request: Callable[[Any, Any], bool]
    machine: WorkflowMachine
    steps: Mapping[str, Step]
    terminal: frozenset[str]
    #: States in which an operator decides (the workflow is settled while no decision is recorded).
    awaiting_operator: frozenset[str] = frozenset()
    #: Operator actions accepted in an ``awaiting_operator`` state (the next step applies them).
    resolutions: tuple[str, ...] = ()
    #: Which of ``resolutions`` each ``awaiting_operator`` state accepts (a state not named here: all of
    #: them). The withdrawal: ``resubmit``/``abandon`` in ``needs_review``, ``approve``/``reject`` in
    #: ``awaiting_approval``.
    accepts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Actions that need a second pair of eyes: a named operator who is not the workflow's submitter,
    #: with a note (``Engine.resolve`` enforces it).
    four_eyes: frozenset[str] = frozenset()
    #: States whose commit someone waits on while holding a scarce resource (a submit's rate slot):
    #: the store writes it without its grouping delay.
    urgent: frozenset[str] = frozenset()
    #: States whose transitions are logged as warnings (an operator should look).
    alerting: frozenset[str] = frozenset()
    past_deadline: DeadlineRule = _never
    expire: Expiry = _no_expiry
    #: Seconds from creation to the deadline (``None``: none), from the engine's workflow settings.
    deadline_after: Callable[[WorkflowSettings], float | None] = lambda _settings: None
    #: The generic indexed columns of a request (see :class:`RowIndex`).
    index: Callable[[Any], RowIndex] = lambda _request: RowIndex()
    #: Accounts a request pays from: each must be configured, or the request is refused at intake.
    accounts: Callable[[Any], Collection[str]] = lambda _request: ()
    #: Prefix of the kind's workflow ids (sortable ids: ``{prefix}_{microseconds}{random}``).
    id_prefix: str = "wf"
    #: The workflow as callers see it (API and CLI JSON).
    view: Callable[[Workflow], dict[str, Any]] = _no_view
    #: Presentation: the usual way through (a progress bar's steps), the states that count as success
    #: (a CLI's ``--wait`` exits 0 on them), and a colour per state worth one (green/red/yellow).
    path: tuple[str, ...] = ()
    success: frozenset[str] = frozenset()
    styles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"a kind name must be non-empty and free of ':': {self.name!r}")
        if self.initial not in self.states:
            raise ValueError(f"{self.name}: initial state {self.initial!r} is not one of its states")
        named = (
            self.terminal, self.awaiting_operator, self.urgent, self.alerting, self.steps, self.path, self.success,
            self.styles,
        )  # fmt: skip
        unknown = {state for states in named for state in states} - set(self.states)
        if unknown:
            raise ValueError(f"{self.name}: unknown state(s) {sorted(unknown)}")
        if set(self.accepts) - set(self.awaiting_operator):
            raise ValueError(f"{self.name}: accepts names states not awaiting an operator")
        actions = {a for accepted in self.accepts.values() for a in accepted} | set(self.four_eyes)
        if actions - set(self.resolutions):
            raise ValueError(f"{self.name}: unknown action(s) {sorted(actions - set(self.resolutions))}")

    def __repr__(self) -> str:
        return f"<WorkflowKind {self.name}: {len(self.states)} states, {len(self.steps)} steps>"

    def is_terminal(self, state: str) -> bool:
        """The state is final: the outcome is decided and the state never changes again (a kind may still
        step a row there for its own notes, e.g. the withdrawal's lane watch)."""
        return state in self.terminal

    def awaits_operator(self, state: str) -> bool:
        """An operator's resolution is accepted in this state."""
        return state in self.awaiting_operator

    def resolutions_in(self, state: str) -> tuple[str, ...]:
        """The operator actions ``state`` accepts (none outside the states awaiting an operator)."""
        if state not in self.awaiting_operator:
            return ()
        return self.accepts.get(state, self.resolutions)

    def awaits_approval(self, state: str) -> bool:
        """The state waits for a second operator's approval (it accepts a four-eyes action): what a
        caller lists as "waiting for a person" beside the states that need a review."""
        return any(action in self.four_eyes for action in self.resolutions_in(state))

    def is_four_eyes(self, action: str) -> bool:
        """The action needs a named operator who is not the submitter, and a note."""
        return action in self.four_eyes

    def states_accepting(self, action: str) -> frozenset[str]:
        """The states in which ``action`` is accepted (a store's flag condition, as ``kind:state``)."""
        return frozenset(state for state in self.awaiting_operator if action in self.resolutions_in(state))

    def settles_in(self, state: str) -> bool:
        """Nothing happens in this state until someone acts, if ever: terminal, or awaiting an operator
        (what a caller that only has a state, e.g. an API view, waits for)."""
        return state in self.terminal or state in self.awaiting_operator

    def is_settled(self, wf: Workflow) -> bool:
        """The one definition of settled: terminal, or waiting for an operator who has not decided yet
        (what ``Engine.wait`` waits for)."""
        return self.is_terminal(wf.state) or (self.awaits_operator(wf.state) and wf.resolution is None)

    def is_urgent(self, state: str) -> bool:
        """A commit into this state is written without the store's grouping delay."""
        return state in self.urgent

    def step(self, state: str) -> Step | None:
        """The step that runs a workflow due in ``state`` (None: nothing runs there)."""
        return self.steps.get(state)

    def check_resolution(self, action: str) -> None:
        """Refuse an operator action this kind does not accept (``InvalidRequest`` on ``action``)."""
        if action not in self.resolutions:
            raise InvalidRequest(f"must be one of {', '.join(self.resolutions) or '(none)'}", field="action")


class KindRegistry(Mapping[str, WorkflowKind]):
    """Kind name -> :class:`WorkflowKind`; also answers which kind a request object belongs to."""

    def __init__(self, kinds: Collection[WorkflowKind] = ()) -> None:
        self._kinds: dict[str, WorkflowKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: WorkflowKind) -> None:
        """Add a kind (its name and request type must be new)."""
        if kind.name in self._kinds:
            raise ValueError(f"kind {kind.name!r} is already registered")
        if any(k.request_type is kind.request_type for k in self._kinds.values()):
            raise ValueError(f"request type {kind.request_type.__name__} already belongs to a kind")
        self._kinds[kind.name] = kind

    def __getitem__(self, name: str) -> WorkflowKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise KeyError(f"no workflow kind {name!r} is registered (known: {sorted(self._kinds)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __repr__(self) -> str:
        return f"<KindRegistry {sorted(self._kinds)}>"

    def of(self, wf: Workflow) -> WorkflowKind:
        """The workflow's kind."""
        return self[wf.kind]

    def for_request(self, request: object) -> WorkflowKind:
        """The kind whose request model ``request`` is (``InvalidRequest`` if none)."""
        for kind in self._kinds.values():
            if isinstance(request, kind.request_type):
                return kind
        raise InvalidRequest(f"no workflow kind takes a {type(request).__name__}")

    def is_settled(self, wf: Workflow) -> bool:
        """Settled by its kind's rule (see :meth:`WorkflowKind.is_settled`)."""
        return self[wf.kind].is_settled(wf)

    def check_resolution(self, action: str) -> None:
        """Refuse an operator action no registered kind accepts (``InvalidRequest`` on ``action``)."""
        accepted = [a for kind in self._kinds.values() for a in kind.resolutions]
        if action not in accepted:
            raise InvalidRequest(f"must be one of {', '.join(dict.fromkeys(accepted)) or '(none)'}", field="action")

    def pairs(self, which: Callable[[WorkflowKind], Collection[str]]) -> tuple[str, ...]:
        """``kind:state`` for the states ``which`` picks from every kind: the parameters SQL compares
        ``kind || ':' || state`` with, so a store never names a state."""
        return tuple(sorted(f"{kind.name}:{state}" for kind in self._kinds.values() for state in which(kind)))

    def terminal_pairs(self) -> tuple[str, ...]:
        """Every kind's terminal states, as ``kind:state``."""
        return self.pairs(lambda kind: kind.terminal)

    def standing_actions(self) -> tuple[str, ...]:
        """Every kind's four-eyes actions: once one is recorded, a store keeps it until it is carried out (a
        second decision may not replace an approver's)."""
        return tuple(sorted({action for kind in self._kinds.values() for action in kind.four_eyes}))

    def awaiting_pairs(self) -> tuple[str, ...]:
        """Every kind's states that accept an operator's resolution, as ``kind:state``."""
        return self.pairs(lambda kind: kind.awaiting_operator)


def new_workflow(
    kind: WorkflowKind,
    request: Any,
    *,
    now: datetime,
    settings: WorkflowSettings,
    idempotency_key: str | None = None,
    parent_id: str | None = None,
    reference: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> tuple[Workflow, Event]:
    """A new workflow of ``kind`` in its initial state, due now, with its sealed first event.

    The first event records the request and the idempotency key (and the caller's reference, metadata,
    the parent and the submitting operator, each only when there is one, so a withdrawal created without
    them hashes exactly as it always did)."""
    wf_id = new_workflow_id(kind.id_prefix)
    data: dict[str, Any] = {"request": kind.dump_request(request), "idempotency_key": idempotency_key}
    if reference is not None:
        data["reference"] = reference
    if metadata is not None:
        data["metadata"] = metadata
    if parent_id is not None:
        data["parent_id"] = parent_id
    if created_by is not None:
        data["created_by"] = created_by
    event = Event(
        workflow_id=wf_id, seq=1, at=now, trigger="create", from_state=None, to_state=str(kind.initial), data=data,
    ).sealed("")  # fmt: skip
    after = kind.deadline_after(settings)
    workflow = Workflow(
        id=wf_id,
        kind=kind.name,
        state=kind.initial,
        request=request,
        created_at=now,
        updated_at=now,
        idempotency_key=idempotency_key,
        parent_id=parent_id,
        reference=reference,
        metadata=metadata,
        created_by=created_by,
        next_run_at=now,
        deadline_at=None if after is None else now + timedelta(seconds=after),
        event_seq=1,
        last_hash=event.hash,
    )
    return workflow, event


def check_idempotency_key(key: str | None) -> None:
    """1-200 characters (or none)."""
    if key is not None and not 0 < len(key) <= 200:
        raise InvalidRequest("must be 1-200 characters", field="idempotency_key")


_default: list[KindRegistry] = []


def default_kinds() -> KindRegistry:
    """The kinds ``engine.bootstrap`` registers: what a store or an engine built without an explicit
    registry runs. Imported on first use (bootstrap imports the workflows, which import the engine)."""
    if not _default:
        from engine.bootstrap import standard_kinds

        _default.append(standard_kinds())
    return _default[0]


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """A parent's children: how many in each state, and how many are settled by their kind's rule."""

    by_state: dict[str, int] = field(default_factory=dict)
    settled: int = 0

    @property
    def total(self) -> int:
        """All children."""
        return sum(self.by_state.values())
