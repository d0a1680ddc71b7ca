"""Deterministic workflow code only: the order saga, its saga helper and its payload types."""
