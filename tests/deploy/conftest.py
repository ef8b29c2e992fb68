"""The control-plane fixtures (a control plane on SQLite and on a real PostgreSQL server)."""

from tests.integration.control.conftest import api, postgres, store_url

__all__ = ["api", "postgres", "store_url"]
