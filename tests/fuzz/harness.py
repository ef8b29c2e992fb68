"""What every fuzz target in tests/fuzz shares: running under atheris (libFuzzer's
command line: `-runs=N`, `-max_total_time=S`, `-artifact_prefix=DIR/`, corpus
directories, …) and coverage instrumentation of the modules under test.

A target module defines `TestOneInput(data: bytes) -> None`, which raises only when
the code under test misbehaves: an exception outside the parser's declared error
types, or a broken consistency check (an `AssertionError`). Run as a script it fuzzes;
imported (tests/fuzz/test_fuzz.py) it replays kept inputs without instrumentation.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def instrumented(module_name: str, *packages: str) -> Iterator[None]:
    """Instrument the imports of `packages` for coverage when the target runs as the
    fuzzer (`module_name == "__main__"`); a no-op when it is imported for replay."""
    if module_name != "__main__":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=list(packages)):
        yield


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz `test_one_input` with the process's libFuzzer arguments; an uncaught
    exception is a finding (atheris writes it to `crash-<sha1>` and exits 77)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
