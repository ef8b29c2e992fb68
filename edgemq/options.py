"""argparse helpers: every option can also come from an `EDGEMQ_*` environment variable."""

from __future__ import annotations

import argparse
import os
from typing import Any


def env_name(option: str) -> str:
    return "EDGEMQ_" + option.lstrip("-").replace("-", "_").upper()


def add_option(
    parser: argparse.ArgumentParser, option: str, *, default: Any, help: str, type: Any = str
) -> None:
    """`--option` whose default comes from EDGEMQ_OPTION when set, else `default`."""
    env = env_name(option)
    raw = os.environ.get(env)
    value = type(raw) if raw is not None else default
    parser.add_argument(
        option, default=value, type=type, help=f"{help} (env {env}; default: %(default)s)"
    )
