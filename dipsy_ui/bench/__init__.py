"""Benchmarks run as scripts: ``python -m dipsy_ui.bench {generation,training,world}``."""
