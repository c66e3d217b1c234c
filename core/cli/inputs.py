"""What the `ace` command accepts, checked at the door: every bad input ends as exit 2 and one line.

`BadInput` carries the message; `main` turns it into `ace: message` on stderr
and exit 2. Arguments parse through `Parser`, whose errors are one line too
(argparse's own print the usage first). Files are read whole only when they are
text of a sane size; arguments and text may hold neither a NUL byte nor a lone
surrogate (what Python makes of bytes that are not UTF-8), except paths, which
may legitimately be such bytes.
"""

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn, Optional

from core.cli.exits import EXIT_USAGE, fail

MAX_TEXT_BYTES = 10_000_000  # a program, its tests or its expected output
PATH_ARGS = frozenset({"tests", "expected", "code", "output", "file", "csv", "json", "suite"})


class BadInput(Exception):
    """An input the command cannot use; the message says which and why, in one line."""


def one_line(text: str) -> str:
    """A message on one line (an exception's text may span several)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class Parser(argparse.ArgumentParser):
    """argparse, with an error as one line on stderr (exit 2) instead of the usage and then the error."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("ace").strip()
        fail(f"{where + ': ' if where else ''}{one_line(message)} (see '{self.prog} --help')", EXIT_USAGE)
        raise SystemExit(EXIT_USAGE)


def bad_text(value: str) -> Optional[str]:
    """Why `value` is not text we take (a NUL byte, a lone surrogate), or None."""
    if "\x00" in value:
        return f"it holds a NUL byte (at character {value.index(chr(0))})"
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return f"it holds a lone surrogate at character {i} (bytes that are not UTF-8?)"
    return None


def check_text(label: str, value: Optional[str]) -> Optional[str]:
    if value is not None and (why := bad_text(value)):
        raise BadInput(f"{label} is not valid text: {why}")
    return value


def check_arguments(args: argparse.Namespace) -> None:
    """Every string argument: no NUL (not even in a path); no lone surrogate outside paths."""
    for name, value in vars(args).items():
        if not isinstance(value, str):
            continue
        label = name.replace("_", "-") if name != "task" else "the task"
        if "\x00" in value:
            raise BadInput(f"{label} is not valid text: it holds a NUL byte")
        if name not in PATH_ARGS:
            check_text(label, value)


def _file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise BadInput(f"no such file: {path} ({what})")
    if not p.is_file():
        raise BadInput(f"not a file: {path} ({what})")
    return p


def read_bytes(path: str, what: str, limit: int) -> bytes:
    """A file's bytes (- reads stdin), refused past `limit`."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with _file(path, what).open("rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {path} ({what}): {exc.strerror or exc}") from None
    if len(data) > limit:
        raise BadInput(f"{path} ({what}) is over {limit:,} bytes")
    return data


def read_text(path: Optional[str], what: str, limit: int = MAX_TEXT_BYTES) -> Optional[str]:
    """A text file argument's content: UTF-8, no NUL; None when not given."""
    if path is None:
        return None
    data = read_bytes(path, what, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} ({what}) is not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from None
    return check_text(f"{path} ({what})", text)


def writable(path: Optional[str], what: str) -> Optional[str]:
    """A path to write later: its folder must exist now, so a long run does not fail at its very end."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{path} ({what}) is a folder; give a file name")
    if not p.parent.is_dir():
        raise BadInput(f"no such folder: {p.parent} ({what})")
    return path


# -- argparse types: a ValueError or ArgumentTypeError becomes the one-line usage error ---------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {value}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


# what argparse names in "invalid int value: 'x'"
positive_int.__name__ = count.__name__ = port.__name__ = "int"
seconds.__name__ = "float"
