"""The engine/workflow seam holds: engine/ names no withdrawal state or data key, and imports no workflow.

Read as code (Python's ``ast``), not as text: a docstring or a comment may explain the withdrawal, but
no string literal in engine/ may be a withdrawal state value or one of its ``data`` keys, no code may
reach a ``State.<member>``, and only the wiring (``engine/bootstrap.py``) and the demo's runner import
from ``workflows``. What engine/ needs to know about a workflow it asks the workflow's kind.

Not searched: ``engine/sandbox/`` (an exchange simulator: it speaks Upbit's states by design) and
``engine/upbit/types.py`` (the exchange API's own ``ExchangeState`` vocabulary, which the withdrawal's
upper-case states mirror). Request field names (``secondary_address`` ...) are the request model's public
fields, shown in views and sent to the exchange, so they are not data keys here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflows.withdrawal_model import State, WithdrawalData, WithdrawalRequest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"
EXEMPT = (ENGINE / "sandbox", ENGINE / "upbit" / "types.py")
#: The modules allowed to import from workflows/: where kinds are registered, and the demo's runner.
IMPORTERS = {ENGINE / "bootstrap.py", ENGINE / "demo.py"}

STATE_VALUES = frozenset(str(s) for s in State)
#: Words of another vocabulary that happen to equal a withdrawal state: (file, value). A webhook delivery
#: is "pending" until it is delivered or failed; that status belongs to the delivery, not to a workflow.
OTHER_VOCABULARY = {(ENGINE / "store" / "webhooks.py", "pending")}
DATA_KEYS = frozenset(WithdrawalData.__annotations__) - frozenset(WithdrawalRequest.__dataclass_fields__)


def engine_files() -> list[Path]:
    return sorted(
        path for path in ENGINE.rglob("*.py") if not any(path == exempt or exempt in path.parents for exempt in EXEMPT)
    )


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def violations(path: Path, source: str | None = None) -> Iterator[str]:
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    docs = _docstrings(tree)
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value in STATE_VALUES and (path, node.value) not in OTHER_VOCABULARY:
                yield f"{where}:{node.lineno}: withdrawal state {node.value!r}"
            if node.value in DATA_KEYS:
                yield f"{where}:{node.lineno}: withdrawal data key {node.value!r}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "State":
            yield f"{where}:{node.lineno}: State.{node.attr}"
        if path not in IMPORTERS and _imports_workflows(node):
            yield f"{where}:{node.lineno}: imports {getattr(node, 'module', None) or 'workflows'}"


def _imports_workflows(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "workflows"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "workflows" for a in node.names)


def test_the_vocabulary_is_what_the_search_looks_for() -> None:
    """The search is only as good as its word list: every state, the data keys steps keep."""
    assert {"pending", "needs_review", "aborted", "DONE", "WAITING"} <= STATE_VALUES
    assert {"wallet_wait", "reconcile", "uncertain_posts", "watch", "absence"} <= DATA_KEYS
    assert "secondary_address" not in DATA_KEYS


def test_the_search_finds_what_it_should() -> None:
    """A planted literal, a ``State.`` reference and a workflows import are found; docstrings are not."""
    planted = (
        '"""Mentions needs_review and \'pending\' in prose: allowed."""\n'
        "from workflows.withdrawal_model import State\n"
        "X = 'needs_review'\nY = State.DONE\nZ = {'wallet_wait': 1}\n"
    )
    found = list(violations(ENGINE / "planted.py", planted))
    assert len(found) == 4, found
    assert any("withdrawal state 'needs_review'" in f for f in found)
    assert any("State.DONE" in f for f in found)
    assert any("data key 'wallet_wait'" in f for f in found)
    assert any("imports workflows.withdrawal_model" in f for f in found)


@pytest.mark.parametrize("path", engine_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_names_no_withdrawal_state_or_data_key(path: Path) -> None:
    assert list(violations(path)) == []


def test_steps_never_reach_the_store() -> None:
    """Steps get the narrow port: no workflow module touches ``ctx.store`` (mypy enforces the types too)."""
    for path in sorted((ROOT / "workflows").rglob("*.py")):
        assert "ctx.store" not in path.read_text(), path
