"""A simulated Upbit exchange (Upbit has no testnet): our test double, and a product feature.

It serves the Exchange API endpoints a withdrawal needs, with Upbit's paths, fields, status codes and
error names; verifies JWTs; enforces the 30/s limit with ``Remaining-Req``, 429 and 418; keeps
balances, allowlists and wallet states from a seed; moves withdrawals through WAITING -> PROCESSING ->
an end state on seeded timings and outcomes; and injects faults on demand. Admin routes under
``/sandbox/`` report what it received and change it live. See ``engine/sandbox/README.md``.
"""

from engine.sandbox.app import SandboxServer, create_app, run_sandbox
from engine.sandbox.model import SandboxSeed
from engine.sandbox.seed import default_seed, load_seed
from engine.sandbox.thread import SandboxThread

__all__ = ["SandboxSeed", "SandboxServer", "SandboxThread", "create_app", "default_seed", "load_seed", "run_sandbox"]
