"""MQTT ingest (DESIGN.md §4, docs/mqtt.md): an ingest-only MQTT 3.1.1/5.0 server whose
PUBACK/PUBREC leave only after the fsync covering the message.

    codec.py         wire primitives, v5 properties, the error tree (pure)
    packets.py       client packets decoded, server packets encoded (pure)
    client_codec.py  the client side of the wire, for tests and benchmarks (pure)
    routing.py       which endpoint a connection writes to (snapshot index)
    connect.py       CONNECT → CONNACK: auth, routing, limits
    publisher.py     PUBLISH → FMT 1 frames → one WAL append per read → acks in order
    session.py       one connection: asyncio Protocol, buffered parsing, lifecycle
    listener.py      TCP/TLS servers, the session table, limits, drain
    websocket.py     MQTT over WebSocket at /mqtt on the HTTP port

Decisions (sessions, token expiry, QoS 2 memory): docs/adr/0008.
"""
