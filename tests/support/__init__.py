"""Shared test helpers (in-memory file systems, fault injection)."""
