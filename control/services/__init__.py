"""Control-plane services: the API's behaviour, without aiohttp types.

Each function takes a `Context` (store, signer, settings, clock) and the caller's
`Principal`, validates its input (raising `control.errors.Invalid` with every
problem), scopes every query by the caller's account, and returns JSON-ready dicts.
"""
