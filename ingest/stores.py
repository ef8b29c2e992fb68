"""One open object store per destination config, shared by every endpoint's delivery.
A destination whose settings changed gets a new store; the old one is closed."""

from __future__ import annotations

from .objectstore.base import ObjectStore
from .objectstore.factory import open_store
from .snapshot import Destination


class StoreCache:
    def __init__(self, *, session_name: str = "edgemq-node") -> None:
        self._session_name = session_name
        self._stores: dict[str, tuple[Destination, ObjectStore]] = {}

    async def get(self, destination: Destination) -> ObjectStore:
        held = self._stores.get(destination.id)
        if held is not None:
            config, store = held
            if _same_target(config, destination):
                return store
            await store.close()
        store = open_store(destination, session_name=self._session_name)
        self._stores[destination.id] = (destination, store)
        return store

    async def close(self) -> None:
        stores = [s for _, s in self._stores.values()]
        self._stores.clear()
        for store in stores:
            await store.close()


def _same_target(a: Destination, b: Destination) -> bool:
    """Status changes (pending → valid) do not need a new client."""
    return (
        a.bucket,
        a.region,
        a.role_arn,
        a.external_id,
        a.kms_key_arn,
        a.path_style,
        a.endpoint_url,
    ) == (
        b.bucket,
        b.region,
        b.role_arn,
        b.external_id,
        b.kms_key_arn,
        b.path_style,
        b.endpoint_url,
    )
