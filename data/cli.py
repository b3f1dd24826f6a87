"""The command-line convention every entry point follows.

An expected error (a bad file, key or value: an `InputError`, which every error type of the
package for bad input derives from; a missing or unreadable file; a `Failure` the user can act
on, such as a tracking store that cannot be used) is one line on stderr, `error: <what>: <why>`,
and exit status 2. `--debug` shows the traceback instead. Anything else, a ValueError from the
math included, is a bug and keeps its traceback.

    def main(argv=None) -> int:
        p = parser(prog="python -m data.stats", description=__doc__)
        ...
        return run(_main, p, argv)

Flags follow one convention too: a store is `--store DIR` (`add_store`); a flag taking several
values takes them either way, `--x a b` or `--x a --x b` (`add_list`); a command that prints a
result prints a short readable summary, and with `--json` exactly one JSON document on stdout
(progress bars and warnings go to stderr).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = ["InputError", "Failure", "parser", "run", "positive_int", "add_list", "add_store", "is_plain_name",
           "split_name", "EXPECTED"]


class InputError(ValueError):
    """An input the user can fix; the message names the file, key or value."""


class Failure(RuntimeError):
    """An expected failure that is not a bad input (a tracking store that cannot be used, a
    selection that cannot stand); the message says which and why."""


# InputError covers StoreError, LabelFileError, AudioError and ConfigError; OSError a missing or
# unreadable file; EOFError a truncated .gz.
EXPECTED: tuple[type[BaseException], ...] = (InputError, OSError, EOFError, Failure)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (`error: <prog>: ...`, exit 2); --help
    still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def parser(prog: str, description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with the raw description layout and the shared `--debug` flag."""
    p = _Parser(prog=prog, description=description, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def run(body: Callable[[argparse.Namespace], int | None], p: argparse.ArgumentParser, argv=None) -> int:
    """Parse `argv` with `p`, call `body(args)`; expected errors become one line and exit 2."""
    a = p.parse_args(argv)
    try:
        return int(body(a) or 0)
    except EXPECTED as e:
        if a.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    if isinstance(e, EOFError):
        text = f"truncated file ({text})"
    return " ".join(text.split())


def is_plain_name(name: str) -> bool:
    """A name that stays where it is joined to a directory: not "", "." or "..", no "/", "\\" or NUL."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def split_name(name: str, what: str) -> str:
    """`name`, checked as the name of a split (a directory of the store): an InputError naming
    `what` (the flag or key) unless it `is_plain_name`."""
    if not is_plain_name(name):
        raise InputError(f"{what}: {name!r} is not a plain name (a split is a directory of the store)")
    return name


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (names the value when it is not)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _Extend(argparse.Action):
    """argparse's "extend", except that the first use replaces the default instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        kept = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, kept + list(values))


def add_list(p, flag: str, **kw) -> argparse.Action:
    """A flag taking one or more values, given as `FLAG a b` or `FLAG a FLAG b` (the same list);
    without the flag the value is `default` (keyword, default None)."""
    return p.add_argument(flag, action=_Extend, nargs="+", **kw)


def add_store(p, help: str, required: bool = True) -> None:
    """`--store DIR`, the spectrogram store."""
    p.add_argument("--store", metavar="DIR", required=required, help=help)
