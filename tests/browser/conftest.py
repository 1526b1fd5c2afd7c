"""The console in a real browser: ``upbit-withdraw run``'s ``serve()`` (the API and the console on one
listener, 127.0.0.1 port 0) over the embedded sandbox and a SQLite file, driven by headless Chromium
(Debian's ``chromium`` through Playwright's ``executable_path``; ``playwright install`` is never run).

Every test gets its own service, store, sandbox and browser, so the suite runs in parallel workers
(``-n 2``). Nothing waits on a sleep: Playwright's ``expect`` and the helpers below wait on conditions,
with generous timeouts for a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright import async_api as playwright_api

from engine.config import ApiConfig, Config, ConsoleConfig
from engine.operators import Role
from engine.policy import CurrencyPolicy, Policy
from engine.sandbox import SandboxServer
from engine.service import serve
from engine.store.operators import operator_store
from engine.store.sqlite import SQLiteStore
from tests.api.conftest import TOKEN, fast_seed, service_config
from tests.conftest import SandboxAdmin

CHROMIUM = os.environ.get("UPBIT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: Milliseconds any expectation may wait (page loads, live updates, the runner on a busy machine).
PATIENCE_MS = 60_000
playwright_api.expect.set_options(timeout=PATIENCE_MS)
PASSWORD = "correct horse battery staple"
#: The operators every test's store holds: name -> role.
OPERATORS = {"sam": Role.SUBMITTER, "ann": Role.APPROVER, "abe": Role.ADMIN, "val": Role.VIEWER}
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
#: BTC withdrawals above this wait for an approver (the other tests stay below it).
APPROVAL_ABOVE = Decimal("0.5")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """No Chromium on this machine: skip with the reason, except in CI (``.ci/run`` installs it and sets
    ``UPBIT_REQUIRE_CHROMIUM=1``, so a missing browser fails there instead of passing by skipping)."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        if os.environ.get("UPBIT_REQUIRE_CHROMIUM") == "1":
            raise pytest.UsageError(f"UPBIT_REQUIRE_CHROMIUM=1 but there is no Chromium at {CHROMIUM}")
        for item in items:
            if "browser" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"))


@dataclass
class Console:
    """A running service: its URL, the sandbox's admin, the operators' API tokens, the store's path."""

    url: str
    admin: SandboxAdmin
    tokens: dict[str, str]
    db: Path
    config: Config
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)

    async def api(self, method: str, path: str, *, token: str = TOKEN, body: Any = None) -> tuple[int, Any]:
        """Call the HTTP API (JSON in and out)."""
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, f"{self.url}{path}", json=body, headers=headers) as response:
            return response.status, await response.json()

    async def submit(self, *, token: str = TOKEN, amount: str = "0.01", **extra: Any) -> dict[str, Any]:
        """POST /v1/withdrawals of BTC to the sandbox's registered address; the new withdrawal's view."""
        body = {"currency": "BTC", "net_type": "BTC", "amount": amount, "address": BTC_ADDRESS, **extra}
        status, view = await self.api("POST", "/v1/withdrawals", token=token, body=body)
        assert status == 201, view
        return dict(view)

    async def state_becomes(self, workflow_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
        """Wait (polling the API) until the withdrawal is in one of ``states``; its view."""
        view: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            while view.get("state") not in states:
                status, view = await self.api("GET", f"/v1/withdrawals/{workflow_id}")
                assert status == 200, view
                if view["state"] not in states:
                    await asyncio.sleep(0.05)  # a poll interval, not a synchronisation
        return view


async def _add_operators(db: Path) -> dict[str, str]:
    """Create the test's operators (passwords set) in the store; their API tokens."""
    store = SQLiteStore(db)
    await store.open()
    try:
        operators = operator_store(store)
        tokens = {}
        for name, role in OPERATORS.items():
            tokens[name] = await operators.add(name, role)
            await operators.set_password(name, PASSWORD)
        return tokens
    finally:
        await store.close()


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[str]:
    """``serve(config)`` in the background until the block ends; yields its URL."""
    stop = asyncio.Event()
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, stop=stop, ready=url.set_result))
    try:
        done, _ = await asyncio.wait({task, url}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert url in done, task.exception() if task.done() else "serve() did not start within 60 s"
        yield url.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    """The service (API + console) on 127.0.0.1 port 0, over the sandbox and a fresh SQLite file."""
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    db = tmp_path / "console.sqlite3"
    async with SandboxServer(seed=fast_seed()) as exchange:
        base = service_config(exchange.url, db)
        api = ApiConfig(token_file=str(token_file)).model_copy(update={"port": 0})  # any free port, bound by serve
        policy = Policy(  # four eyes above these (the other tests stay below)
            currencies={"BTC": CurrencyPolicy(approval_above=APPROVAL_ABOVE)}, batch_approval_above={"BTC": Decimal(1)}
        )
        config = dataclasses.replace(base, api=api, console=ConsoleConfig(idle_minutes=30), policy=policy)
        tokens = await _add_operators(db)
        async with running(config) as url, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            yield Console(url=url, admin=SandboxAdmin(exchange.url), tokens=tokens, db=db, config=config, http=http)


Browser = Any
Page = Any


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (a fresh temporary profile: Playwright gives every launch its own user-data-dir)."""
    async with playwright_api.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


Login = Callable[..., Awaitable[Page]]


@pytest.fixture
def login(browser: Browser, console: Console) -> Login:
    """A page logged in as the named operator (its own browser context: its own cookies)."""

    async def open_as(name: str, *, width: int = 1280, height: int = 900) -> Page:
        context = await browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(PATIENCE_MS)
        page = await context.new_page()
        await page.goto(f"{console.url}/console/")
        expect = playwright_api.expect
        await expect(page).to_have_url(f"{console.url}/console/login?next=%2Fconsole%2F", timeout=PATIENCE_MS)
        await page.get_by_label("Name").fill(name)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator("#operator")).to_contain_text(name, timeout=PATIENCE_MS)
        return page

    return open_as


def expect(target: Any) -> Any:
    """Playwright's auto-waiting ``expect``."""
    return playwright_api.expect(target)
