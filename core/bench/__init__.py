"""Benchmark suites and runs: baseline against ACE on the same tasks."""
