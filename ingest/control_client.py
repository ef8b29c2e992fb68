"""The node's side of the node protocol (DESIGN.md §8), over HTTP with aiohttp.

Every call has a deadline; failures raise `ControlUnavailable` (network, timeouts,
5xx: retry later) or `ControlRejected` (4xx: our request or key is wrong). Nothing here
retries; the callers (config sync, the commit reporter) own their retry loops.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class ControlError(Exception):
    pass


class ControlUnavailable(ControlError):
    """Unreachable, timed out or answering 5xx: try again later."""


class ControlRejected(ControlError):
    """A 4xx answer: retrying the same request will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"control plane answered {status}: {body[:500]}")
        self.status = status


class ControlClient:
    def __init__(self, base_url: str, node_key: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"X-API-Key": node_key, "User-Agent": "edgemq-node"}
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=8),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._timeout_s)
        try:
            async with self._client().request(
                method, self.base_url + path, json=body, params=params, timeout=timeout
            ) as resp:
                text = await resp.text()
                if resp.status >= 500:
                    raise ControlUnavailable(f"{method} {path}: {resp.status} {text[:200]}")
                if resp.status >= 400:
                    raise ControlRejected(resp.status, text)
                try:
                    data = json.loads(text)
                except ValueError as err:
                    raise ControlUnavailable(f"{method} {path}: answer is not JSON") from err
                if not isinstance(data, dict):
                    raise ControlUnavailable(f"{method} {path}: answer is not an object")
                return data
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ControlUnavailable(f"{method} {path}: {err!r}") from err

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/nodes/register", body=body)

    async def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"/v1/nodes/{node_id}/heartbeat", body=body)

    async def config(self, node_id: str, *, after_epoch: int, wait_s: int) -> dict[str, Any]:
        return await self._call(
            "GET",
            f"/v1/nodes/{node_id}/config",
            params={"after_epoch": str(after_epoch), "wait_s": str(wait_s)},
            timeout_s=wait_s + self._timeout_s,
        )

    async def report_commits(self, node_id: str, commits: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("POST", f"/v1/nodes/{node_id}/commits", body={"commits": commits})
