"""Benchmarks that print figures and ratios; they never fail on time (see bench/README.md)."""
