"""Request bodies checked before any parser sees them: nesting depth, UTF-8, NUL characters and lone surrogates.

Python's JSON parser recurses once per nested array or object (100k levels: RecursionError), and text
holding NUL (PostgreSQL cannot store it) or a lone surrogate (`"\\ud800"`: not Unicode, SQLite's UTF-8
encoding fails on it) must be refused at the door, naming the field. Regular expressions do the
scanning (`portability.json_problem`, the import's own check), so a large import costs a few passes in
C, not a Python loop per character; only a body with a `\\u0000` or `\\udXXX` escape is parsed here.
"""

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from core.playbook.portability import json_problem

_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


@dataclass
class Problem:
    loc: list[str | int]
    msg: str
    type: str


def _printable(key: str) -> str:
    """A key as it may appear in an error's `loc`: lone surrogates and NUL written as escapes."""
    return "".join(f"\\u{ord(c):04x}" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in key)


def _bad_text(text: str) -> Optional[tuple[str, str]]:
    if "\x00" in text:
        return "string_nul", "holds a NUL character (\\u0000), which cannot be stored: remove it"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            return "string_surrogate", (f"holds a lone surrogate (\\u{code:04x}), which is not Unicode text: "
                                        "send the character itself, or both halves of a surrogate pair")
    return None


def bad_text(value: Any, loc: list[str | int]) -> Optional[Problem]:
    """The first string (or object key) in a parsed JSON value that holds a NUL or a lone surrogate."""
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            found = _bad_text(v)
            if found:
                return Problem(where, f"{'.'.join(map(str, where[1:])) or 'the body'} {found[1]}", found[0])
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                found = _bad_text(k)
                if found:
                    return Problem([*where, _printable(k)], f"the key {_printable(k)!r} {found[1]}", found[0])
                stack.append((item, [*where, k]))
        elif isinstance(v, list):
            stack.extend((item, [*where, i]) for i, item in reversed(list(enumerate(v))))
    return None


def check_json(body: bytes) -> Optional[Problem]:
    """Why a JSON request body must be refused before parsing, or None (a malformed body that is not
    dangerous to parse is left to the parser, which names the position)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(["body"], f"the body is not UTF-8 text (byte {exc.start})", "json_invalid")
    return _check_json_text(text)


def _check_json_text(text: str) -> Optional[Problem]:
    found = json_problem(text)
    if found is not None:
        return Problem(["body"], found[1], found[0])
    if _ESCAPES.search(text):
        try:
            value = json.loads(text)
        except ValueError:
            return None  # the parser reports it
        return bad_text(value, ["body"])
    return None


def check_text(body: bytes) -> Optional[Problem]:
    """A playbook file (JSON or text, as the import reads it): JSON is checked as JSON; raw NUL bytes are
    refused; text that is not UTF-8 is left to the import, which says so."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith("{"):
        return _check_json_text(text)
    at = text.find("\x00")
    if at >= 0:
        return Problem(["body"], f"the file holds a NUL character (at character {at}), which cannot be stored: "
                                 "remove it", "string_nul")
    return None
