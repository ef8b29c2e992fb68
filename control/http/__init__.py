"""The control plane's HTTP layer (aiohttp): routes, auth, the JSON error body."""
