"""Benchmarks: rawstream against framework-based servers (see benchmarks/RESULTS.md)."""
