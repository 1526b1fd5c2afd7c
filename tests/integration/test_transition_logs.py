"""``engine.log_transitions``: the level of the one ``workflow.transitioned`` line per transition.

``debug`` leaves those lines out at log level INFO (some 5-20% of the CPU at high volume) while every
transition stays an event; lines into an alerting state stay warnings whatever the setting.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import structlog

from engine import State
from engine.logging import configure_logging, transition_level
from tests.integration.test_engine import request_for


def transitioned(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "workflow.transitioned"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("level", "transitions", "logged"), [("INFO", "info", True), ("INFO", "debug", False), ("DEBUG", "debug", True)]
)
async def test_transition_lines_follow_the_setting_and_events_stay(
    sandbox: Any, engine_factory: Any, level: str, transitions: str, logged: bool
) -> None:
    out = io.StringIO()
    configure_logging(level=level, json=True, stream=out, transitions=transitions)
    try:
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            assert (await engine.wait(wf.id, timeout=20)).state is State.DONE
            events = [e async for e in engine.events(wf.id, follow=False)]
    finally:
        structlog.reset_defaults()
        configure_logging(level="INFO", stream=io.StringIO())  # back to the default transitions level
        structlog.reset_defaults()
    lines = transitioned(out.getvalue())
    assert len(events) >= 6 and events[-1].to_state == "DONE"
    if logged:
        assert [(x["from_state"], x["to_state"], x["seq"]) for x in lines] == [
            (e.from_state, e.to_state, e.seq) for e in events[1:]
        ]
        assert {x["level"] for x in lines} == {transitions if level == "DEBUG" else "info"}
    else:
        assert lines == []
    assert transition_level() == 20


def test_an_unknown_transitions_level_is_refused() -> None:
    with pytest.raises(ValueError, match="info or debug"):
        configure_logging(level="INFO", stream=io.StringIO(), transitions="trace")
    structlog.reset_defaults()
