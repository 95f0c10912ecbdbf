"""Helpers for testing pruning on generated architectures (used by tests and benchmarks)."""
