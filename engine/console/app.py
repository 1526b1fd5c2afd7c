"""The console's aiohttp sub-application: routes, the session and CSRF middleware, the pages and the actions.

Mounted under ``/console/`` on the API's own app by :func:`mount_console` (``upbit-withdraw run`` serves
both on one listener). The API's bearer-token check lets ``/console`` paths through; here every request but
the login page and the static files needs a live session cookie, and every POST the session's CSRF token.

Pages are rendered on the server (Jinja2) and read without JavaScript. With it, ``static/console.js`` opens
``/console/events`` (an ``EventSource`` on :meth:`Engine.stream`, resuming from the feed cursor the page was
rendered at) and asks htmx to re-fetch the page's live regions when an event arrives.

Every action goes through the engine with ``operator=<the session's operator>`` and the operator's note;
the role check happens here before the engine is asked (and the engine checks state and four eyes itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web

from engine.batch_ops import BATCH_KIND
from engine.config import ConsoleConfig
from engine.console import actions as acts
from engine.console.auth import (
    COOKIE_PATH,
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    cookie_options,
    csrf_matches,
    login_allowed,
    safe_next,
)
from engine.console.diagram import render_svg, taken_path
from engine.console.live import serve_events
from engine.console.overview import ThrottleHistory, gather, start_history
from engine.core import Engine
from engine.errors import (
    EngineError,
    Forbidden,
    InvalidRequest,
    InvalidTransition,
    WorkflowNotFound,
)
from engine.models import Workflow
from engine.operators import Operator
from engine.query import DEFAULT_PAGE, ListFilter, parse_list_query
from engine.store.operators import OperatorStore, operator_store
from engine.views import workflow_view

__all__ = ["CONSOLE_PATH", "Console", "create_console", "mount_console"]

log = structlog.get_logger("engine.console")

#: Where the console is mounted on the API's app.
CONSOLE_PATH = "/console"
#: The workflow kind the withdrawal pages list.
WITHDRAWAL = "withdrawal"
#: The ``after`` of a page rendered while the feed was empty: every event, from the first.
FROM_START = "start"
_HERE = Path(__file__).parent
_ID_RE = re.compile(r"wd_[0-9a-f]{1,64}")
_BATCH_RE = re.compile(r"bt_[0-9a-f]{1,64}")
_CURSOR_RE = re.compile(r"[!-~]{1,64}")
_SEARCH_LIMIT = 50
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """What the console's handlers share: the engine, the operators, the settings, the templates."""

    engine: Engine
    operators: OperatorStore
    settings: ConsoleConfig
    templates: jinja2.Environment
    keepalive: float = 15.0
    history: ThrottleHistory = field(default_factory=ThrottleHistory)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def idle(self) -> timedelta:
        """How long a session may sit idle."""
        return timedelta(minutes=self.settings.idle_minutes)

    def now(self) -> datetime:
        """The engine's clock (the sessions' times are the store's)."""
        return self.engine.clock.now()


CONSOLE = web.AppKey("console", Console)


@dataclass(frozen=True, slots=True)
class Visitor:
    """The logged-in operator of one request, with the session's CSRF token and cookie token."""

    operator: Operator
    csrf: str = field(repr=False)
    token: str = field(repr=False)


_VISITOR = web.RequestKey("console_visitor", Visitor)


def _visitor(request: web.Request) -> Visitor:
    return request[_VISITOR]


# -- wiring --------------------------------------------------------------------------------------------


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["pretty"] = _pretty
    env.filters["minutes"] = _minutes
    return env


def create_console(
    engine: Engine, settings: ConsoleConfig | None = None, *, keepalive: float = 15.0
) -> web.Application:
    """The console as an app of its own, to be mounted at :data:`CONSOLE_PATH` (see :func:`mount_console`)."""
    console = Console(
        engine=engine, operators=operator_store(engine.store), settings=settings or ConsoleConfig(),
        templates=_templates(), keepalive=keepalive,
    )  # fmt: skip
    start_history(engine.gateways, console.history)
    app = web.Application(middlewares=[_pages_middleware, _session_middleware])
    app[CONSOLE] = console
    app.on_shutdown.append(_closing)
    add = app.router
    add.add_get("/", overview, allow_head=False)
    add.add_get("/login", login_page, allow_head=False)
    add.add_post("/login", login)
    add.add_post("/logout", logout)
    add.add_get("/withdrawals", withdrawals, allow_head=False)
    add.add_get("/withdrawals/{id}", withdrawal, allow_head=False)
    add.add_post("/withdrawals/{id}/cancel", cancel)
    add.add_post("/withdrawals/{id}/resolve", resolve)
    add.add_get("/batches", batches, allow_head=False)
    add.add_get("/batches/{id}", batch, allow_head=False)
    add.add_get("/batches/{id}/report.csv", batch_report_csv, allow_head=False)
    add.add_post("/batches/{id}/cancel", cancel)
    add.add_post("/batches/{id}/resolve", resolve)
    add.add_get("/events", events, allow_head=False)
    add.add_static("/static/", _HERE / "static", append_version=False)
    return app


def mount_console(
    app: web.Application, engine: Engine, settings: ConsoleConfig | None = None, *, keepalive: float = 15.0
) -> None:
    """Serve the console under ``/console/`` on ``app`` (the API's app, before it starts), unless disabled."""
    settings = settings or ConsoleConfig()
    if not settings.enabled:
        return

    async def to_console(_request: web.Request) -> web.StreamResponse:
        return _redirect(f"{CONSOLE_PATH}/", status=302)

    app.router.add_get(CONSOLE_PATH, to_console, allow_head=False)  # before the sub-app, which would take it
    app.add_subapp(CONSOLE_PATH, create_console(engine, settings, keepalive=keepalive))


async def _closing(app: web.Application) -> None:
    """Before aiohttp waits for handlers: open live-update streams end now."""
    app[CONSOLE].closing.set()


# -- middlewares ---------------------------------------------------------------------------------------


@web.middleware
async def _pages_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as HTML pages (never the API's JSON), and the security headers on every answer."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _error_page(request, exc.status, exc.reason)
    except Forbidden as exc:
        response = _error_page(request, 403, exc.message)
    except WorkflowNotFound as exc:
        response = _error_page(request, 404, exc.message)
    except InvalidTransition as exc:
        response = _error_page(request, 409, exc.message)
    except InvalidRequest as exc:
        response = _error_page(request, 422, exc.message)
    except EngineError as exc:
        log.error("console.engine_error", error=type(exc).__name__, message=exc.message)
        response = _error_page(request, 503, "the engine could not complete the request; see the service log")
    except Exception:
        log.exception("console.crashed", method=request.method, path=request.path)
        response = _error_page(request, 500, "internal error; see the service log")
    if not response.prepared:
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.path.startswith(f"{CONSOLE_PATH}/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
    return response


def _open_path(path: str) -> bool:
    return path == f"{CONSOLE_PATH}/login" or path.startswith(f"{CONSOLE_PATH}/static/")


@web.middleware
async def _session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A live session for everything but the login page and static files; the CSRF token on every POST."""
    if _open_path(request.path):
        return await handler(request)
    console = request.app[CONSOLE]
    token = request.cookies.get(SESSION_COOKIE)
    session = await console.operators.session(token, now=console.now(), idle=console.idle) if token else None
    if session is None or token is None:
        live = request.path == f"{CONSOLE_PATH}/events" or request.headers.get("HX-Request") == "true"
        if request.method == "GET" and not live:  # a live refresh gets a 401 (htmx swaps nothing then)
            response = _redirect(f"{CONSOLE_PATH}/login?{urlencode({'next': request.path_qs})}")
            if token is not None:
                response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
            return response
        raise web.HTTPUnauthorized(reason="log in first (the session is missing or has expired)")
    operator = session.operator
    request[_VISITOR] = Visitor(operator=operator, csrf=session.csrf, token=token)
    if request.method == "POST":
        form = await request.post()
        if not csrf_matches(session.csrf, form.get(CSRF_FIELD)):
            log.warning("console.csrf_refused", operator=operator.name, path=request.path)
            raise web.HTTPForbidden(reason="the form's CSRF token is missing or wrong (reload the page)")
    return await handler(request)


# -- rendering helpers ---------------------------------------------------------------------------------


def _redirect(location: str, *, status: int = 303) -> web.Response:
    """A redirect as a plain answer (an ``HTTPException`` would reach the API's JSON error middleware)."""
    return web.Response(status=status, headers={"Location": location})


def _render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    console = request.app[CONSOLE]
    visitor = request.get(_VISITOR)  # none on the login page
    page = console.templates.get_template(template).render(
        request=request, visitor=visitor, csrf_field=CSRF_FIELD, kinds=console.engine.kinds,
        withdrawal_kind=WITHDRAWAL, batch_kind=BATCH_KIND, tone=_tone(console.engine), **context,
    )  # fmt: skip
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An error as a page; "Back" leads to the page an action was posted from (its parent path)."""
    back = request.path.rsplit("/", 1)[0] if request.method == "POST" else f"{CONSOLE_PATH}/"
    if not back.startswith(f"{CONSOLE_PATH}/") or back.endswith("/logout"):
        back = f"{CONSOLE_PATH}/"
    return _render(request, "error.html", status=status, status_code=status, message=message, back=back)


def _tone(engine: Engine) -> Callable[[str, str], str]:
    """The colour a state gets: its kind's style (green, red, yellow) or plain."""

    def tone(kind: str, state: str) -> str:
        found = engine.kinds.get(kind)
        return found.styles.get(state, "plain") if found is not None else "plain"

    return tone


def _when(value: object) -> str:
    """A time as ``2026-01-02 03:04:05 UTC`` (ISO strings from views too)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _pretty(value: object) -> str:
    """JSON evidence, indented, in full."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def _minutes(seconds: float) -> str:
    """A window's length: ``58 min``, ``1 h``, ``1 h 50 min``."""
    minutes = max(0, round(seconds / 60))
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h" + (f" {rest} min" if rest else "")


# -- login ---------------------------------------------------------------------------------------------


def _secure(request: web.Request, console: Console) -> bool:
    return request.secure or console.settings.behind_tls_proxy


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /console/login: the form (name + password, or an API token), with its own CSRF cookie."""
    console = request.app[CONSOLE]
    return _login_form(request, console)


def _login_form(request: web.Request, console: Console, *, error: str | None = None, status: int = 200) -> web.Response:
    token = secrets.token_urlsafe(32)
    allowed = login_allowed(
        secure=request.secure, remote=request.remote, behind_tls_proxy=console.settings.behind_tls_proxy
    )
    response = _render(
        request, "login.html", status=status, error=error, login_csrf=token, allowed=allowed,
        next_path=safe_next(request.query.get("next")), name=request.query.get("name", ""),
    )  # fmt: skip
    response.set_cookie(LOGIN_COOKIE, token, **cookie_options(secure=_secure(request, console), max_age=3600))
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """POST /console/login: check the form's CSRF, the transport, then the credentials; open a session."""
    console = request.app[CONSOLE]
    form = await request.post()
    if not csrf_matches(request.cookies.get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
        raise web.HTTPForbidden(reason="the login form's CSRF token is missing or wrong (reload the page)")
    if not login_allowed(
        secure=request.secure, remote=request.remote, behind_tls_proxy=console.settings.behind_tls_proxy
    ):
        log.warning("console.login_refused_plain_http", remote=request.remote)
        raise web.HTTPForbidden(
            reason="logins over plain HTTP are accepted only from this machine: use HTTPS (a TLS proxy with "
            "[console] behind_tls_proxy = true)"
        )
    name, password, api_token = (_text(form.get(key)) for key in ("name", "password", "token"))
    operator: Operator | None = None
    if api_token:
        operator = await console.operators.by_token(api_token)
    elif name and password:
        operator = await console.operators.by_password(name, password)
    if operator is None:
        log.info("console.login_failed", name=name[:64] if name else None, by="token" if api_token else "password")
        return _login_form(request, console, error="wrong name and password, or unknown token", status=401)
    session = await console.operators.open_session(operator.name, now=console.now())
    log.info("console.login", operator=operator.name, role=str(operator.role))
    response = _redirect(safe_next(_text(form.get("next"))))
    response.set_cookie(SESSION_COOKIE, session.token, **cookie_options(secure=_secure(request, console)))
    response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /console/logout: the session ends in the store; the cookie is dropped."""
    console = request.app[CONSOLE]
    visitor = _visitor(request)
    await console.operators.close_session(visitor.token)
    log.info("console.logout", operator=visitor.operator.name)
    response = _redirect(f"{CONSOLE_PATH}/login")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


# -- pages ---------------------------------------------------------------------------------------------


async def _feed_cursor(engine: Engine) -> str | None:
    """Where this page's live updates start: the feed's head as the page is read."""
    return await engine.store.feed_head()


def _events_url(cursor: str | None, **filters: str) -> str:
    params = {k: v for k, v in filters.items() if v}
    params["after"] = cursor if cursor is not None else FROM_START  # an empty feed: everything that comes
    return f"{CONSOLE_PATH}/events" + (f"?{urlencode(params)}" if params else "")


async def overview(request: web.Request) -> web.StreamResponse:
    """GET /console/: counts, throughput, the exchange budget, webhooks; what waits for a person first."""
    console = request.app[CONSOLE]
    cursor = await _feed_cursor(console.engine)
    kinds = tuple(name for name in (WITHDRAWAL, BATCH_KIND) if name in console.engine.kinds)
    data = await gather(console.engine, console.history, kind_names=kinds)
    return _render(request, "overview.html", data=data, events_url=_events_url(cursor))


async def withdrawals(request: web.Request) -> web.StreamResponse:
    """GET /console/withdrawals: the list API's filters and paging, or a search across the identifiers."""
    console = request.app[CONSOLE]
    engine = console.engine
    cursor = await _feed_cursor(engine)
    query = [(k, v) for k, v in request.query.items() if k != "q" and v != ""]
    search = request.query.get("q", "").strip()
    states = [str(s) for s in engine.kinds[WITHDRAWAL].states]
    problems: dict[str, str] = {}
    items: list[Workflow] = []
    next_cursor: str | None = None
    total = 0
    if search:
        found = await _search(engine, search)
        if len(found) == 1 and found[0].id == search:
            return _redirect(f"{CONSOLE_PATH}/withdrawals/{search}")
        items, total = found, len(found)
    else:
        try:
            where, limit, after = parse_list_query(query, kind=WITHDRAWAL, states=states)
            page = await engine.page(where, limit=limit, cursor=after)
            items, next_cursor, total = page.items, page.next_cursor, page.total
        except InvalidRequest as exc:
            problems = dict(exc.fields or {exc.field or "query": exc.message})
    chosen = set(request.query.getall("state", []))
    unpaged = [p for p in query if p[0] != "cursor"]
    next_url = None
    if next_cursor is not None:
        next_url = f"{CONSOLE_PATH}/withdrawals?" + urlencode([*unpaged, ("cursor", next_cursor)])
    first_url = f"{CONSOLE_PATH}/withdrawals?{urlencode(unpaged)}" if "cursor" in dict(query) else None
    return _render(
        request, "withdrawals.html", items=items, total=total, next_url=next_url, problems=problems,
        states=states, chosen=chosen, search=search, query=dict(query), first_url=first_url,
        views=[workflow_view(wf, engine.kinds) for wf in items], limit=DEFAULT_PAGE, events_url=_events_url(cursor),
        status=422 if problems else 200,
    )  # fmt: skip


async def _search(engine: Engine, text: str) -> list[Workflow]:
    """Withdrawals whose id, reference, idempotency key, exchange uuid or txid is exactly ``text``."""
    found: dict[str, Workflow] = {}
    if _ID_RE.fullmatch(text):
        with contextlib.suppress(WorkflowNotFound):
            wf = await engine.get(text)
            if wf.kind == WITHDRAWAL:
                found[wf.id] = wf
    value = text[:256]
    wheres = (
        ListFilter(kind=WITHDRAWAL, reference=value), ListFilter(kind=WITHDRAWAL, idempotency_key=value),
        ListFilter(kind=WITHDRAWAL, exchange_uuid=value), ListFilter(kind=WITHDRAWAL, txid=value),
    )  # fmt: skip
    for where in wheres:
        for wf in await engine.list(where, limit=_SEARCH_LIMIT):
            found[wf.id] = wf
    return sorted(found.values(), key=lambda wf: wf.id, reverse=True)


def _workflow_id(request: web.Request, pattern: re.Pattern[str]) -> str:
    workflow_id = request.match_info["id"]
    if not pattern.fullmatch(workflow_id):
        raise web.HTTPNotFound(reason=f"no such workflow: {workflow_id[:80]}")
    return workflow_id


async def withdrawal(request: web.Request) -> web.StreamResponse:
    """GET /console/withdrawals/{id}: the request, the diagram, the timeline, the actions."""
    console = request.app[CONSOLE]
    engine = console.engine
    cursor = await _feed_cursor(engine)
    wf = await engine.get(_workflow_id(request, _ID_RE))
    kind = engine.kinds.of(wf)
    found = [e async for e in engine.events(wf.id, follow=False)]
    timeline = [e.to_dict() for e in found]
    path = taken_path((e.from_state, e.to_state) for e in found)
    visitor = _visitor(request)
    created_by = wf.created_by
    offered = acts.available(kind, wf, visitor.operator, created_by=created_by)
    return _render(
        request, "withdrawal.html", wf=wf, view=workflow_view(wf, engine.kinds), timeline=timeline,
        diagram=render_svg(kind, current=str(wf.state), path=path), actions=offered, created_by=created_by,
        settled=kind.is_settled(wf), awaits=kind.awaits_operator(wf.state), done=request.query.get("done"),
        events_url=_events_url(cursor, workflow=wf.id), max_note=acts.MAX_NOTE,
    )  # fmt: skip


async def batches(request: web.Request) -> web.StreamResponse:
    """GET /console/batches: newest first, a page at a time."""
    console = request.app[CONSOLE]
    engine = console.engine
    cursor = await _feed_cursor(engine)
    after = request.query.get("cursor")
    if after is not None and not _BATCH_RE.fullmatch(after):
        raise web.HTTPNotFound(reason="not a batch cursor")
    page = await engine.page(ListFilter(kind=BATCH_KIND), limit=DEFAULT_PAGE, cursor=after)
    views = [workflow_view(wf, engine.kinds) for wf in page.items]
    next_url = f"{CONSOLE_PATH}/batches?{urlencode({'cursor': page.next_cursor})}" if page.next_cursor else None
    return _render(
        request, "batches.html", views=views, total=page.total, next_url=next_url, events_url=_events_url(cursor)
    )


async def batch(request: web.Request) -> web.StreamResponse:
    """GET /console/batches/{id}: progress by state, the settlement report, cancel (and decisions)."""
    console = request.app[CONSOLE]
    engine = console.engine
    cursor = await _feed_cursor(engine)
    batch_id = _workflow_id(request, _BATCH_RE)
    status = await engine.get_batch(batch_id)
    report = await engine.batch_report(batch_id)
    wf = await engine.get(batch_id)
    kind = engine.kinds.of(wf)
    created_by = wf.created_by
    offered = acts.available(kind, wf, _visitor(request).operator, created_by=created_by)
    children: Mapping[str, int] = status.get("children", {})
    total = sum(children.values())
    settled = sum(n for state, n in children.items() if engine.kinds[WITHDRAWAL].settles_in(state))
    totals = ", ".join(f"{amount} {currency}" for currency, amount in status.get("totals", {}).items())
    addresses = len({item.request.address for item in getattr(wf.request, "items", ())})
    restate = f"the batch {wf.id}: {status.get('items', 0)} withdrawals totalling {totals} to {addresses} address(es)"
    return _render(
        request, "batch.html", wf=wf, batch_status=status, restate=restate, report=report, children=children,
        total=total, settled=settled, actions=offered, created_by=created_by, done=request.query.get("done"),
        events_url=_events_url(cursor, batch=wf.id), max_note=acts.MAX_NOTE,
    )  # fmt: skip


async def batch_report_csv(request: web.Request) -> web.StreamResponse:
    """GET /console/batches/{id}/report.csv: the report's items as a CSV download."""
    engine = request.app[CONSOLE].engine
    batch_id = _workflow_id(request, _BATCH_RE)
    text = engine.batch_report_csv(await engine.batch_report(batch_id))
    return web.Response(
        text=text, content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}-report.csv"'},
    )  # fmt: skip


# -- actions -------------------------------------------------------------------------------------------


async def cancel(request: web.Request) -> web.StreamResponse:
    """POST .../{id}/cancel (a withdrawal or a batch), with an optional note."""
    return await _act(request, acts.CANCEL)


async def resolve(request: web.Request) -> web.StreamResponse:
    """POST .../{id}/resolve with ``action`` and a required ``note``."""
    form = await request.post()
    return await _act(request, _text(form.get("action")))


async def _act(request: web.Request, action: str) -> web.StreamResponse:
    """Check the role and the note here, then ask the engine as the session's operator; back to the page."""
    console = request.app[CONSOLE]
    engine = console.engine
    is_batch = request.path.startswith(f"{CONSOLE_PATH}/batches/")
    workflow_id = _workflow_id(request, _BATCH_RE if is_batch else _ID_RE)
    wf = await engine.get(workflow_id)
    kind = engine.kinds.of(wf)
    operator = _visitor(request).operator
    known = {acts.CANCEL, *kind.resolutions}
    if action not in known:
        raise InvalidRequest(f"unknown action {action[:40]!r} (one of: {', '.join(sorted(known))})", field="action")
    permission = acts.permission_for(kind, action)
    if not operator.can(permission):
        log.warning("console.forbidden", operator=operator.name, action=action, workflow_id=workflow_id)
        raise Forbidden(f"your role ({operator.role}) may not {action} (it needs the {permission} permission)")
    form = await request.post()
    note = _text(form.get("note")).replace("\r\n", "\n").replace("\r", "\n") or None  # a textarea sends CRLF
    if action == acts.CANCEL:
        if is_batch:
            await engine.cancel_batch(workflow_id, operator=operator.name, note=note)
        else:
            await engine.cancel(workflow_id, operator=operator.name, note=note)
    else:
        if note is None:
            raise InvalidRequest("a decision needs a note (say why)", field="note")
        await engine.resolve(workflow_id, action, operator=operator.name, note=note)
    log.info("console.action", operator=operator.name, action=action, workflow_id=workflow_id)
    where = "batches" if is_batch else "withdrawals"
    return _redirect(f"{CONSOLE_PATH}/{where}/{workflow_id}?{urlencode({'done': action})}")


# -- live updates --------------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    """GET /console/events: committed events as Server-Sent Events (optionally one workflow's or one batch's),
    from the cursor the page was rendered at. Ends with an ``expired`` event after the idle time (the page
    then stops listening and refreshing: an unattended tab does not keep a session alive for long), and at
    the server's shutdown."""
    console = request.app[CONSOLE]
    workflow = request.query.get("workflow")
    batch_id = request.query.get("batch")
    after = request.headers.get("Last-Event-ID") or request.query.get("after")
    if (
        (workflow is not None and not _ID_RE.fullmatch(workflow))
        or (batch_id is not None and not _BATCH_RE.fullmatch(batch_id))
        or (after is not None and not _CURSOR_RE.fullmatch(after))
    ):
        raise web.HTTPBadRequest(reason="bad workflow, batch or after parameter")
    if after == FROM_START:
        after = None
    elif after is None:
        after = await console.engine.store.feed_head()
    items = console.engine.stream(after=after, from_start=after is None, workflow_id=workflow, batch_id=batch_id)
    return await serve_events(
        request, items, lifetime=console.idle.total_seconds(), keepalive=console.keepalive, closing=console.closing
    )
