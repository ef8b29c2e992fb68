"""Pick the object store for a destination of the config snapshot.

`file://DIR` destinations (what `edgemq up` creates) are the local store with objects
at `DIR/<bucket>/<key>`; DIR and the bucket directory are created on first use. Every
other destination is S3 (or an S3-compatible store at `endpoint_url`), reached by
assuming the destination's role.
"""

from __future__ import annotations

from typing import Any

from ingest.objectstore.base import ObjectStore
from ingest.objectstore.local import LocalStore
from ingest.objectstore.s3 import S3Store
from ingest.snapshot import Destination
from shared.clock import SYSTEM_CLOCK, Clock


def open_store(
    destination: Destination,
    *,
    session_name: str = "edgemq-node",
    clock: Clock = SYSTEM_CLOCK,
    **s3_options: Any,
) -> ObjectStore:
    """The store for `destination`; `s3_options` go to S3Store (part sizes, timeouts)."""
    if destination.is_local:
        return LocalStore(destination.local_root, destination.bucket, create_bucket=True)
    return S3Store(destination, session_name=session_name, clock=clock, **s3_options)
