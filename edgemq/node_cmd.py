"""`edgemq node`: run one ingest node until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal

from ingest.node import Node
from ingest.settings import NodeSettings

log = logging.getLogger(__name__)


async def run_node(settings: NodeSettings, *, stop: asyncio.Event | None = None) -> int:
    """Serve until `stop` is set (or a signal arrives); drain; 0 when everything held
    was delivered, 3 when the drain deadline left data in the WAL for the next start."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    raise_open_files_limit()
    node = Node(settings)
    try:
        await node.start()
        print(f"edgemq node {node.node_id}: ingest on {node.http_url}", flush=True)
        await stop.wait()
        log.warning("draining (deadline %.0fs)", settings.drain_deadline_s)
        drained = await node.drain()
        return 0 if drained else 3
    finally:
        await node.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def raise_open_files_limit() -> tuple[int, int]:
    """Every connection is a descriptor: lift the soft RLIMIT_NOFILE to the hard one
    (10,000 idle MQTT devices would not fit the common soft limit of 1,024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("could not raise the open-files limit from %d: %s", soft, err)
    return soft, hard


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
