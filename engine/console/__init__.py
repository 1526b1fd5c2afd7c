"""The operator console: server-rendered pages under ``/console/`` on the API's listener (issue #14).

:func:`mount_console` adds it to the API's app (``engine.service`` does, for ``upbit-withdraw run``). See
:mod:`engine.console.app` for the routes and the session rules, :mod:`engine.console.auth` for the login
rules, :mod:`engine.console.diagram` for the state diagram, :mod:`engine.console.overview` for the figures,
:mod:`engine.console.live` for the live updates.
"""

from __future__ import annotations

from engine.console.app import CONSOLE_PATH, create_console, mount_console

__all__ = ["CONSOLE_PATH", "create_console", "mount_console"]
