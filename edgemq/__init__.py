"""The `edgemq` command: the composition root that may import every package.

Libraries (`wal`, `compiler`, `shared`) and services (`ingest`, `control`) never import
this package; see docs/adr/0001-layout-and-cli-package.md.
"""
