"""Fuzz target: the commit manifest parser (ingest.manifest.parse_manifest).

Only `ManifestError` may escape (the module promises it is "strict and total"), and a
manifest that parses re-encodes to bytes that parse to the same manifest, through
both `msgspec` and `encode_manifest` (which validates before anything is written).

    mkdir -p /tmp/manifest   # new inputs go to the first corpus directory
    python tests/fuzz/fuzz_manifest.py -runs=100000 -dict=tests/fuzz/manifest.dict \\
        /tmp/manifest tests/fuzz/corpus/manifest
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec

from tests.fuzz.harness import fuzz, instrumented

with instrumented(__name__, "ingest.manifest", "ingest.layout"):
    from ingest.manifest import ManifestError, encode_manifest, parse_manifest


def TestOneInput(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except ManifestError:
        return
    again = parse_manifest(msgspec.json.encode(manifest))
    assert again == manifest, "a parsed manifest does not survive msgspec re-encoding"
    try:
        encoded = encode_manifest(msgspec.to_builtins(manifest))
    except ManifestError as err:
        raise AssertionError(f"encode_manifest refuses a manifest that parsed: {err}") from err
    assert parse_manifest(encoded) == manifest


if __name__ == "__main__":
    fuzz(TestOneInput)
