"""A workflow kind's state diagram as inline SVG, with the path one workflow took highlighted (pure, no I/O).

Drawn on the server so that the page shows it without JavaScript. The layout is derived from the kind's
transition table alone (the console names no state): states in rows by their distance from the initial
state, the terminal states together in the last row, and within a row the kind's usual way through
(``WorkflowKind.path``) first. A transition the workflow took (read from its events) is drawn thick, the
states it visited filled, the state it is in now outlined; every other transition is a thin grey line,
so the picture shows both where it went and where it could have gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from engine.kinds import WorkflowKind

__all__ = ["Layout", "layout", "render_svg", "taken_path"]

BOX_W, BOX_H = 140, 34
GAP_X, GAP_Y = 22, 52
MARGIN = 24


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each state's box sits (its top-left corner) and the picture's size."""

    at: dict[str, tuple[int, int]]
    rows: list[list[str]]
    width: int
    height: int


def _edges(kind: WorkflowKind) -> list[tuple[str, str]]:
    """Every (source, destination) pair of the table that changes the state, once, in table order."""
    seen: dict[tuple[str, str], None] = {}
    for spec in kind.machine.table:
        if spec.dest is None:
            continue
        for source in spec.source:
            if source != spec.dest:
                seen[(str(source), str(spec.dest))] = None
    return list(seen)


def layout(kind: WorkflowKind) -> Layout:
    """Rows by breadth-first distance from the initial state (terminal states last, together)."""
    states = [str(s) for s in kind.states]
    terminal = {s for s in states if kind.is_terminal(s)}
    edges = _edges(kind)
    depth = {str(kind.initial): 0}
    frontier = [str(kind.initial)]
    while frontier:
        following: list[str] = []
        for source in frontier:
            for a, b in edges:
                if a == source and b not in depth and b not in terminal:
                    depth[b] = depth[source] + 1
                    following.append(b)
        frontier = following
    last = max(depth.values(), default=0)
    for state in states:  # unreachable non-terminal states: after the reachable ones
        if state not in depth and state not in terminal:
            last += 1
            depth[state] = last
    rows: list[list[str]] = [[] for _ in range(last + (2 if terminal else 1))]
    usual = [str(s) for s in kind.path]
    order = {s: (usual.index(s) if s in usual else len(usual) + states.index(s)) for s in states}
    for state in sorted(states, key=lambda s: order[s]):
        rows[len(rows) - 1 if state in terminal else depth[state]].append(state)
    rows = [row for row in rows if row]
    widest = max(len(row) for row in rows)
    width = 2 * MARGIN + widest * BOX_W + (widest - 1) * GAP_X
    at: dict[str, tuple[int, int]] = {}
    for r, row in enumerate(rows):
        span = len(row) * BOX_W + (len(row) - 1) * GAP_X
        left = (width - span) // 2
        for c, state in enumerate(row):
            at[state] = (left + c * (BOX_W + GAP_X), MARGIN + r * (BOX_H + GAP_Y))
    height = 2 * MARGIN + len(rows) * BOX_H + (len(rows) - 1) * GAP_Y
    return Layout(at=at, rows=rows, width=width, height=height)


def taken_path(transitions: Iterable[tuple[str | None, str]]) -> list[tuple[str, str]]:
    """The state changes a workflow made, in order, from its events' (from, to) pairs (notes, which keep
    the state, and the creation, which has no source, are left out)."""
    return [(str(a), str(b)) for a, b in transitions if a is not None and a != b]


def _curve(start: tuple[int, int], end: tuple[int, int], row_a: int, row_b: int) -> str:
    """An SVG path from box ``start`` to box ``end`` (their top-left corners): down edges leave the bottom
    and enter the top, edges within a row arc above it, edges back up run along the right-hand side."""
    (ax, ay), (bx, by) = start, end
    mid_a, mid_b = ax + BOX_W // 2, bx + BOX_W // 2
    if row_b > row_a:
        y1, y2 = ay + BOX_H, by
        bend = max(18, (y2 - y1) // 2)
        return f"M{mid_a},{y1} C{mid_a},{y1 + bend} {mid_b},{y2 - bend} {mid_b},{y2}"
    if row_b == row_a:
        lift = 20 + abs(bx - ax) // 12
        return f"M{mid_a},{ay} C{mid_a},{ay - lift} {mid_b},{by - lift} {mid_b},{by}"
    x1, x2 = ax + BOX_W, bx + BOX_W
    reach = 36 + 10 * (row_a - row_b)
    return f"M{x1},{ay + BOX_H // 2} C{x1 + reach},{ay} {x2 + reach},{by + BOX_H} {x2},{by + BOX_H // 2}"


def render_svg(kind: WorkflowKind, *, current: str, path: Sequence[tuple[str, str]]) -> Markup:
    """The diagram as an ``<svg>`` element (safe to insert into a page: every text is escaped)."""
    placed = layout(kind)
    row_of = {state: r for r, row in enumerate(placed.rows) for state in row}
    taken = set(path)
    visited = {str(kind.initial), *(b for _, b in path), *(a for a, _ in path), str(current)}
    parts = [
        f'<svg class="diagram" viewBox="0 0 {placed.width + 60} {placed.height}" role="img" '
        f'aria-label="state diagram of the {escape(kind.name)} kind; this one is {escape(current)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>'
        '<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead taken"/></marker></defs>',
    ]
    edges = sorted(_edges(kind), key=lambda e: e in taken)  # taken ones drawn last, on top
    for a, b in edges:
        is_taken = (a, b) in taken
        d = _curve(placed.at[a], placed.at[b], row_of[a], row_of[b])
        marker = "arrow-taken" if is_taken else "arrow"
        edge_class = "edge taken" if is_taken else "edge"
        parts.append(
            f'<path class="{edge_class}" d="{d}" marker-end="url(#{marker})" '
            f'data-from="{escape(a)}" data-to="{escape(b)}">'
            f"<title>{escape(a)} \u2192 {escape(b)}</title></path>"
        )
    for state, (x, y) in placed.at.items():
        css = ["state", f"tone-{kind.styles.get(state, 'plain')}"]
        if state in visited:
            css.append("visited")
        if state == str(current):
            css.append("current")
        if kind.is_terminal(state):
            css.append("terminal")
        radius = BOX_H // 2 if kind.is_terminal(state) else 6
        parts.append(
            f'<g class="{" ".join(css)}" data-state="{escape(state)}"><title>{escape(state)}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{radius}"/>'
            f'<text x="{x + BOX_W // 2}" y="{y + BOX_H // 2 + 4}" text-anchor="middle">{escape(state)}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text above is escaped
