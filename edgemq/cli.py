"""`edgemq` command line. `edgemq --help` lists the commands; every option also reads
an `EDGEMQ_*` environment variable."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .options import add_option


def _segment_cat(args: argparse.Namespace) -> int:
    from wal.dump import dump_segment

    try:
        error = dump_segment(args.path, sys.stdout)
    except OSError as err:
        print(f"edgemq segment cat: {err}", file=sys.stderr)
        return 2
    if error is not None:
        print(f"edgemq segment cat: {args.path}: {error}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from .up import up

    return up(args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemq", description="Self-hosted EdgeMQ: HTTP/MQTT in, query-ready S3 out."
    )
    add_option(parser, "--log-level", default="WARNING", help="logging level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run everything on this machine with embedded defaults")
    add_option(up, "--data-dir", default="./edgemq-data", help="where state and the WAL live")
    up.set_defaults(func=_up)

    segment = commands.add_parser("segment", help="inspect WAL segment files")
    segment_commands = segment.add_subparsers(dest="segment_command", required=True)
    cat = segment_commands.add_parser(
        "cat",
        help="print a .wal or .wal.zst segment as JSON lines, verifying CRCs",
        description="One JSON line per frame (offset, ts, fmt, tenant, topic, payload, "
        "encoding). Exits 1 naming the offset of the first corrupt frame, 2 when the "
        "file cannot be read.",
    )
    cat.add_argument("path", help="segment file (.wal, .wal.open or .wal.zst)")
    cat.set_defaults(func=_segment_cat)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
    except BrokenPipeError:
        code = 0
    sys.exit(code)
