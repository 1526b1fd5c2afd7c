"""Harnesses that drive the withdrawal workflow end to end, shared by ``tests/`` and ``benchmarks/``.

Nothing in the service imports this package. It lives in the installed package (not in ``tests/``) so the
benchmarks can import it without putting the test suite on ``sys.path``, and under ``workflows/`` (not
``engine/``) because it knows the withdrawal kind: its states, events and request bodies.

- :mod:`workflows.testing.timings`: short workflow and sandbox timings for tests (``FAST``, ``FAST_EXCHANGE``);
- :mod:`workflows.testing.chaos`: the chaos run (the service SIGKILLed at random against a faulty sandbox);
- :mod:`workflows.testing.checks`: what the chaos run checks once everything settled;
- :mod:`workflows.testing.live`: a live stack (sandbox, engine, HTTP API) in a background thread.
"""
