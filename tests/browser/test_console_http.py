"""The console's HTTP rules without a browser: sessions, cookies, CSRF, plain-HTTP logins, idle expiry,
logout, security headers, and that the API keeps its own authentication beside the console.

The API app (``create_app``) with the console mounted as ``upbit-withdraw run`` mounts it, over an engine
on a real SQLite file whose clock the test moves (idle expiry without waiting half an hour). No runner, no
exchange: these rules are the console's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.api import create_app
from engine.clock import FakeClock
from engine.config import ConsoleConfig
from engine.console import mount_console
from engine.core import Engine
from engine.models import WithdrawalRequest
from engine.operators import Role
from engine.store.operators import operator_store
from engine.store.sqlite import SQLiteStore
from engine.store.webhooks import Subscription, webhook_store
from tests.api.conftest import BTC_ADDRESS, TOKEN

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Site:
    """A test client of the API app with the console, its engine's clock, and the operators' API tokens."""

    def __init__(self, client: TestClient[Any, Any], engine: Engine, clock: FakeClock, tokens: dict[str, str]) -> None:
        self.client = client
        self.engine = engine
        self.clock = clock
        self.tokens = tokens

    async def login_form(self) -> tuple[str, str]:
        """GET the login page; its form's CSRF token and its login cookie's value (in the client's jar too,
        unless Secure: a client sends no Secure cookie over plain HTTP, so the caller passes it itself)."""
        response = await self.client.get("/console/login")
        assert response.status == 200
        found = _CSRF.search(await response.text())
        assert found is not None
        return found.group(1), SimpleCookie(_set_cookie(response, "upbit_console_login"))["upbit_console_login"].value

    async def login(self, name: str = "ann", password: str = PASSWORD, **extra: str) -> Any:
        """POST the login form (with its CSRF token and cookie); the answer (not followed)."""
        csrf, cookie = await self.login_form()
        form = {"csrf": csrf, "name": name, "password": password, "next": "/console/withdrawals", **extra}
        headers = {"Cookie": f"upbit_console_login={cookie}"}
        return await self.client.post("/console/login", data=form, headers=headers, allow_redirects=False)

    async def page_csrf(self, path: str = "/console/") -> str:
        """The session's CSRF token, as every page's forms carry it."""
        response = await self.client.get(path, allow_redirects=False)
        assert response.status == 200, response.status
        found = _CSRF.search(await response.text())
        assert found is not None
        return found.group(1)


@asynccontextmanager
async def site_for(
    tmp_path: Path, *, settings: ConsoleConfig | None = None, remote: str | None = None
) -> AsyncIterator[Site]:
    """The app over a fresh store; ``remote``: pretend every request comes from that address."""
    clock = FakeClock()
    store = SQLiteStore(tmp_path / f"console-{len(list(tmp_path.glob('console-*')))}.sqlite3")
    engine = Engine(store=store, gateways={}, clock=clock, run_runner=False, accounts=["default"])
    async with engine:
        operators = operator_store(engine.store)
        tokens = {}
        for name, role in (("ann", Role.APPROVER), ("val", Role.VIEWER)):
            tokens[name] = await operators.add(name, role)
            await operators.set_password(name, PASSWORD)
        app = create_app(engine, token=TOKEN)
        if remote is not None:

            @web.middleware
            async def from_afar(request: web.Request, handler: Any) -> web.StreamResponse:
                return await handler(request.clone(remote=remote))

            app.middlewares.append(from_afar)
        mount_console(app, engine, settings or ConsoleConfig())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield Site(client, engine, clock, tokens)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with site_for(tmp_path) as built:
        yield built


def _request(amount: str = "0.01") -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address=BTC_ADDRESS)


def _set_cookie(response: Any, name: str) -> str:
    """The raw Set-Cookie header for ``name``."""
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            return str(header)
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.getall('Set-Cookie', [])}")


async def test_pages_need_a_session(site: Site) -> None:
    """Without a session: pages lead to the login (keeping where you were going), the live stream and
    every action are refused; /console leads to /console/."""
    page = await site.client.get("/console/withdrawals?state=DONE", allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"] == "/console/login?next=%2Fconsole%2Fwithdrawals%3Fstate%3DDONE"
    assert (await site.client.get("/console/events")).status == 401
    live = await site.client.get("/console/", headers={"HX-Request": "true"}, allow_redirects=False)
    assert live.status == 401  # a live refresh of an expired page: htmx leaves the page as it was
    posted = await site.client.post("/console/withdrawals/wd_0123/cancel", data={"note": "x"})
    assert posted.status == 401 and "text/html" in posted.headers["Content-Type"]
    bare = await site.client.get("/console", allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (302, "/console/")


async def test_login_sets_a_strict_http_only_cookie_and_goes_where_asked(site: Site) -> None:
    """A good login: 303 to the page asked for; the session cookie is HttpOnly, SameSite=Strict, for
    /console only, and not Secure over plain HTTP from loopback (there is no TLS to require)."""
    response = await site.login()
    assert response.status == 303 and response.headers["Location"] == "/console/withdrawals"
    cookie = _set_cookie(response, "upbit_console")
    parsed = SimpleCookie(cookie)["upbit_console"]
    assert parsed["httponly"] and parsed["samesite"] == "Strict" and parsed["path"] == "/console"
    assert not parsed["secure"]
    assert len(parsed.value) >= 32
    page = await site.client.get("/console/withdrawals")
    assert page.status == 200 and "ann" in await page.text()


async def test_behind_a_tls_proxy_the_cookie_is_secure(tmp_path: Path) -> None:
    """[console] behind_tls_proxy = true: the browser talks HTTPS to the proxy, so the cookie is Secure."""
    async with site_for(tmp_path, settings=ConsoleConfig(behind_tls_proxy=True)) as site:
        response = await site.login()
        assert response.status == 303
        assert SimpleCookie(_set_cookie(response, "upbit_console"))["upbit_console"]["secure"]


async def test_login_by_api_token(site: Site) -> None:
    """The operator's API token logs in as that operator (no name needed)."""
    response = await site.login(name="", password="", token=site.tokens["val"])
    assert response.status == 303
    page = await site.client.get("/console/")
    assert 'id="operator">val <small>viewer</small>' in await page.text()


@pytest.mark.parametrize(("name", "password", "token"), [("ann", "wrong password!", ""), ("nobody", PASSWORD, ""),
                                                         ("", "", "uwo_not-a-token")])  # fmt: skip
async def test_bad_credentials_are_401_without_a_session(site: Site, name: str, password: str, token: str) -> None:
    """Wrong password, unknown operator, unknown token: the form again (401), no session cookie."""
    response = await site.login(name=name, password=password, token=token)
    assert response.status == 401
    assert "wrong name and password, or unknown token" in await response.text()
    assert not any(h.startswith("upbit_console=") for h in response.headers.getall("Set-Cookie", []))


async def test_the_login_form_needs_its_csrf_token(site: Site) -> None:
    """A login posted without the form's token (or with another) is refused: 403, no session."""
    await site.login_form()
    for form in ({"name": "ann", "password": PASSWORD}, {"name": "ann", "password": PASSWORD, "csrf": "forged"}):
        response = await site.client.post("/console/login", data=form, allow_redirects=False)
        assert response.status == 403
        assert "upbit_console=" not in " ".join(response.headers.getall("Set-Cookie", []))


async def test_plain_http_logins_from_another_machine_are_refused(tmp_path: Path) -> None:
    """From a non-loopback address over plain HTTP the page warns and the login is refused (403), right
    credentials or not; declaring a TLS proxy in front lets it through."""
    async with site_for(tmp_path, remote="203.0.113.9") as site:
        page = await site.client.get("/console/login")
        assert 'id="plain-http"' in await page.text()
        response = await site.login()
        assert response.status == 403
        assert "plain HTTP" in await response.text()
    async with site_for(tmp_path, remote="203.0.113.9", settings=ConsoleConfig(behind_tls_proxy=True)) as site:
        assert (await site.login()).status == 303


async def test_idle_sessions_expire(site: Site) -> None:
    """A session used within idle_minutes lives on (each request renews it); one left idle longer is over."""
    await site.login()
    site.clock.advance(25 * 60)
    assert (await site.client.get("/console/", allow_redirects=False)).status == 200
    site.clock.advance(25 * 60)  # 50 minutes after login, 25 after the last request
    assert (await site.client.get("/console/", allow_redirects=False)).status == 200
    site.clock.advance(31 * 60)
    expired = await site.client.get("/console/", allow_redirects=False)
    assert expired.status == 303 and expired.headers["Location"].startswith("/console/login")


async def test_every_post_needs_the_session_csrf_token(site: Site) -> None:
    """A logged-in POST without the CSRF token, or with another one, is refused (403) and does nothing:
    here a logout that would otherwise end the session."""
    await site.login()
    for form in ({}, {"csrf": "x" * 43}):
        refused = await site.client.post("/console/logout", data=form, allow_redirects=False)
        assert refused.status == 403
        assert "CSRF" in await refused.text()
    assert (await site.client.get("/console/", allow_redirects=False)).status == 200


async def test_logout_ends_the_session_in_the_store(site: Site) -> None:
    """After logout the old cookie value is worthless, even replayed by hand."""
    response = await site.login()
    token = SimpleCookie(_set_cookie(response, "upbit_console"))["upbit_console"].value
    csrf = await site.page_csrf()
    out = await site.client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/console/login"
    replayed = await site.client.get("/console/", headers={"Cookie": f"upbit_console={token}"}, allow_redirects=False)
    assert replayed.status == 303


async def test_security_headers_and_no_caching(site: Site) -> None:
    """Pages forbid framing, foreign scripts and styles, and caching; static files may be cached."""
    await site.login()
    page = await site.client.get("/console/")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Content-Type-Options"] == "nosniff"
    script = await site.client.get("/console/static/htmx.min.js")
    assert script.status == 200 and "Cache-Control" not in script.headers
    assert "htmx" in await script.text()


async def test_the_api_keeps_its_own_authentication(site: Site) -> None:
    """The console's cookie opens nothing outside /console: the API still wants its bearer token."""
    await site.login()
    assert (await site.client.get("/v1/withdrawals")).status == 401
    authorised = await site.client.get("/v1/withdrawals", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorised.status == 200


async def test_unknown_console_pages_are_html_404s(site: Site) -> None:
    """A console path that does not exist, or an unknown withdrawal, is a 404 page (not the API's JSON)."""
    await site.login()
    for path in ("/console/nowhere", "/console/withdrawals/wd_00000000deadbeef"):
        response = await site.client.get(path)
        assert response.status == 404 and "text/html" in response.headers["Content-Type"]


async def test_a_disabled_console_is_not_served(tmp_path: Path) -> None:
    """[console] enabled = false: /console/ is the API's 404."""
    async with site_for(tmp_path, settings=ConsoleConfig(enabled=False)) as site:
        response = await site.client.get("/console/login")
        assert response.status in (401, 404)
        assert (await site.client.get("/console/login", headers={"Authorization": f"Bearer {TOKEN}"})).status == 404


async def test_the_live_stream_sends_events_and_ends_after_the_idle_time(tmp_path: Path) -> None:
    """/console/events sends committed events (from the cursor a page names) and, after idle_minutes,
    an ``expired`` event that ends it, so an open tab does not keep a session alive."""
    async with site_for(tmp_path, settings=ConsoleConfig(idle_minutes=0.02)) as site:  # a 1.2 s stream
        await site.login()
        engine = site.engine
        head = await engine.store.feed_head()
        created = await engine.submit(_request(), reference="live-1")
        url = f"/console/events?after={head or 'start'}"
        async with site.client.get(url) as stream:
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            received = b""
            async with asyncio.timeout(30):
                while b"event: expired" not in received:
                    chunk = await stream.content.readany()
                    assert chunk, "the stream ended without an expired event"
                    received += chunk
        assert f'"workflow_id":"{created.id}"'.encode() in received
        assert received.index(created.id.encode()) < received.index(b"event: expired")


async def test_the_live_stream_refuses_bad_parameters(site: Site) -> None:
    await site.login()
    for query in ("workflow=nope", "batch=wd_01", "after=%0Aevil"):
        assert (await site.client.get(f"/console/events?{query}")).status == 400


async def test_the_list_filters_pages_and_searches(tmp_path: Path) -> None:
    """The withdrawals page: the list API's filters, paging by cursor, a search by reference, idempotency
    key, exchange uuid or txid (an id goes straight to its page), and bad filters named (422)."""
    async with site_for(tmp_path) as site:
        engine = site.engine
        made = []
        for n in range(3):
            made.append(await engine.submit(_request(f"0.0{n + 1}"), reference=f"ref-{n}", idempotency_key=f"key-{n}"))
        found = dataclasses.replace(made[1], exchange_uuid="uuid-abc", txid="tx-abc", state="DONE")
        await engine.store.commit(found, None, owner=None)
        await site.login()

        async def ids(query: str) -> list[str]:
            response = await site.client.get(f"/console/withdrawals?{query}", allow_redirects=False)
            assert response.status == 200, (query, response.status)
            return re.findall(r'<tr data-id="(wd_[0-9a-f]+)"', await response.text())

        assert await ids("") == [wf.id for wf in reversed(made)]
        assert await ids("state=DONE") == [made[1].id]
        assert await ids("state=pending&state=DONE&currency=BTC") == [wf.id for wf in reversed(made)]
        first = await site.client.get("/console/withdrawals?limit=2")
        page = await first.text()
        next_link = re.search(r'href="(/console/withdrawals\?[^"]*cursor=[^"]+)"', page)
        assert next_link is not None and re.findall(r'<tr data-id="(wd_[0-9a-f]+)"', page) == [made[2].id, made[1].id]
        assert await ids(next_link.group(1).split("?", 1)[1].replace("&amp;", "&")) == [made[0].id]
        for text in ("ref-2", "key-2"):
            assert await ids(f"q={text}") == [made[2].id]
        for text in ("uuid-abc", "tx-abc"):
            assert await ids(f"q={text}") == [made[1].id]
        assert await ids("q=nothing-like-it") == []
        direct = await site.client.get(f"/console/withdrawals?q={made[0].id}", allow_redirects=False)
        assert (direct.status, direct.headers["Location"]) == (303, f"/console/withdrawals/{made[0].id}")
        bad = await site.client.get("/console/withdrawals?state=nope&created_after=yesterday&limit=0")
        assert bad.status == 422
        problems = await bad.text()
        assert all(f"<strong>{name}</strong>" in problems for name in ("state", "created_after", "limit"))


async def test_actions_check_role_and_note_then_go_through_the_engine_as_the_operator(site: Site) -> None:
    """A cancel from the console is the engine's cancel by the logged-in operator, with the note; a viewer's is
    refused (403) before the engine is asked; a decision without a note is refused (422); an action the kind
    does not know is refused too."""
    wf = await site.engine.submit(_request())
    await site.login("val")
    csrf = await site.page_csrf()
    refused = await site.client.post(f"/console/withdrawals/{wf.id}/cancel", data={"csrf": csrf, "note": "no"})
    assert refused.status == 403 and "viewer" in await refused.text()
    assert (await site.engine.get(wf.id)).cancel_requested_at is None

    await site.login("ann")
    csrf = await site.page_csrf()
    for form, status in (({"action": "abandon"}, 422), ({"action": "launch", "note": "x"}, 422)):
        answer = await site.client.post(f"/console/withdrawals/{wf.id}/resolve", data={"csrf": csrf, **form})
        assert answer.status == status, form
    assert (
        "needs a note"
        in await (
            await site.client.post(f"/console/withdrawals/{wf.id}/resolve", data={"csrf": csrf, "action": "abandon"})
        ).text()
    )
    done = await site.client.post(
        f"/console/withdrawals/{wf.id}/cancel", data={"csrf": csrf, "note": "wrong address\r\nper ticket 42"},
        allow_redirects=False,
    )  # fmt: skip
    assert (done.status, done.headers["Location"]) == (303, f"/console/withdrawals/{wf.id}?done=cancel")
    flagged = await site.engine.get(wf.id)
    assert flagged.cancel_requested_at is not None
    assert (flagged.cancel_by, flagged.cancel_note) == ("ann", "wrong address\nper ticket 42")
    again = await site.client.get(f"/console/withdrawals/{wf.id}?done=cancel")
    assert 'id="done"' in await again.text()


async def test_the_overview_says_what_it_knows_and_what_it_cannot(site: Site) -> None:
    """Webhook health per subscription (host only, never the URL's path or secret); a process without
    exchange gateways says it has no budget to show rather than showing zeros; what waits comes first."""
    await webhook_store(site.engine.store).create_subscription(
        Subscription(id="wh_01", url="https://hooks.example.com/upbit?key=s3cret", events=("*",),
                     secrets=("0123456789abcdef0123",), source="api", created_at=0.0)
    )  # fmt: skip
    await site.login()
    page = await (await site.client.get("/console/")).text()
    assert "wh_01" in page and "hooks.example.com" in page and "s3cret" not in page
    assert "none yet" in page and "0</strong> pending" in page
    assert "calls no exchange" in page
    assert page.index('id="waiting"') < page.index("Withdrawals by state")
