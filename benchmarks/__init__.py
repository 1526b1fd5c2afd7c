"""Benchmarks of the withdrawal engine (see benchmarks/README.md)."""
