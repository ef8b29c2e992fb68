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
    # A string default goes through `type` when the option is not on the command line
    # (argparse does that at parse time), so a bad EDGEMQ_* value is a usage error of
    # the command that uses it, naming the variable, not a traceback for every command.
    parser.add_argument(
        option,
        default=raw if raw is not None else default,
        type=_named(type, option, env),
        help=f"{help} (env {env}; default: %(default)s)",
    )


def _named(convert: Any, option: str, env: str) -> Any:
    def parse(value: str) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(
                f"invalid value {value!r} (from {option} or {env}): {err}"
            ) from err

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
