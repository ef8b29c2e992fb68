"""The control plane's store: one schema on SQLite (default) or PostgreSQL."""

from .db import Database, open_database

__all__ = ["Database", "open_database"]
