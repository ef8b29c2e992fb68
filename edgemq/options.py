"""argparse helpers: every option can also come from an `EDGEMQ_*` environment variable.

- `add_option`: a valued option (`--http-port` ← `EDGEMQ_HTTP_PORT`);
- `add_list_option`: a repeatable option (`--only A --only B`) read from a
  comma-separated variable (`EDGEMQ_ONLY=A,B`); the command line replaces it.

A bad value is a usage error of the command that uses it, naming the variable, never a
failure while the parser of every command is built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any


def env_name(option: str) -> str:
    return "EDGEMQ_" + option.lstrip("-").replace("-", "_").upper()


def add_option(
    parser: Any,
    option: str,
    *,
    default: Any,
    help: str,
    type: Any = str,
    metavar: str | None = None,
    shown_default: str | None = None,
) -> None:
    """`--option` whose default comes from EDGEMQ_OPTION when set, else `default`.
    `parser` is a parser or one of its groups; `shown_default` replaces the default
    in the help text (for a default the command works out, such as a path)."""
    env = env_name(option)
    raw = os.environ.get(env)
    # A string default goes through `type` when the option is not on the command line
    # (argparse does that at parse time), so a bad EDGEMQ_* value is a usage error of
    # the command that uses it, naming the variable, not a traceback for every command.
    parser.add_argument(
        option,
        default=raw if raw is not None else default,
        type=_named(type, option, env),
        metavar=metavar,
        help=f"{help} (env {env}; default: {shown_default or '%(default)s'})",
    )


class _AppendOverEnv(argparse.Action):
    """`append` that starts from an empty list on the command line (argparse's own
    would append to the environment's list)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest)
        if items is self.default or items is None:
            items = []
        setattr(namespace, self.dest, [*items, values])


def flag_default(option: str) -> bool:
    """The default of a `store_true` flag: on when its EDGEMQ_* variable is 1/true/yes."""
    return os.environ.get(env_name(option), "").lower() in ("1", "true", "yes")


def add_list_option(parser: Any, option: str, *, help: str, metavar: str) -> None:
    """A repeatable option whose default is EDGEMQ_OPTION split at commas (None when
    unset or empty); giving it on the command line replaces that list."""
    env = env_name(option)
    default: Sequence[str] | None = [
        part.strip() for part in os.environ.get(env, "").split(",") if part.strip()
    ] or None
    parser.add_argument(
        option,
        action=_AppendOverEnv,
        default=default,
        metavar=metavar,
        help=f"{help}; repeatable (env {env}, comma-separated)",
    )


def choice(*choices: str) -> Any:
    """An argparse `type` accepting one of `choices`."""

    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    parse.__name__ = "choice"
    return parse


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
