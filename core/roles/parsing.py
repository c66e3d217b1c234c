"""Reading what a model really replies, not only what it was asked for.

Weak models wrap their JSON in prose or code fences, put real newlines inside JSON strings, answer a
fenced code block instead of JSON, write bullet ids as numbers or as `[py-00042]`, and leave fields
null. These helpers find the usable part; what they cannot use they refuse with a short excerpt, so
the client's repair round can say what was wrong.
"""

import json
import re
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from core.roles.unfenced import is_label, is_sentence, parse_python, unfenced_code

EXCERPT_CHARS = 160
MAX_IDS = 20
MAX_ID_CHARS = 100  # ids longer than any real one are kept (clipped) so the loop can count them as invented
MAX_SCANNED = 200  # '{' positions tried when a JSON object sits inside prose
MAX_SCAN_CHARS = 1_000_000  # characters read by failed tries at those positions, all together

_LENIENT = json.JSONDecoder(strict=False)  # strict=False: real newlines inside strings, as weak models write them

# Code-fence tags per sandbox language; other tags name prose or data, not a program.
LANGUAGE_TAGS: dict[str, frozenset[str]] = {
    "python": frozenset({"python", "py", "python3", "py3"}),
    "javascript": frozenset({"javascript", "js", "node", "nodejs", "mjs", "cjs"}),
    "bash": frozenset({"bash", "sh", "shell", "zsh"}),
}
NOT_CODE_TAGS = frozenset({"json", "jsonc", "text", "txt", "output", "plaintext", "markdown", "md", "console",
                           "log", "diff", "yaml", "yml", "xml", "html", "csv"})
FENCE_TAG = {"python": "python", "javascript": "javascript", "bash": "bash"}

# Every pattern here stays linear on a long reply: the tag is bounded, so a long run of word characters
# after ``` is not tried at every split between the tag and the rest of the fence line.
_FENCE = re.compile(r"```[ \t]*([\w+#.-]{0,30})[^\n`]*\n(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"```[ \t]*([\w+#.-]{0,30})[^\n`]*\n(.*)\Z", re.S)
_FENCE_LINE = re.compile(r"```[ \t]*[\w+#.-]{0,30}[ \t]*\n?")


def excerpt(text: Optional[str], limit: int = EXCERPT_CHARS) -> str:
    """A reply's start on one line, for an error message."""
    flat = " ".join((text or "").split())
    if not flat:
        return "(an empty reply)"
    return repr(flat if len(flat) <= limit else flat[:limit] + " ...")


# ------------------------------------------------------------------ JSON somewhere in the reply


def raw_decode(text: str, start: int = 0) -> tuple[Any, int]:
    """The JSON value starting at `start` and where it ends; ValueError for anything that is not one,
    also for nesting too deep to read (RecursionError) or too big (MemoryError)."""
    try:
        return _LENIENT.raw_decode(text, start)
    except (RecursionError, MemoryError) as exc:
        raise ValueError(f"JSON nested too deeply or too big to read ({type(exc).__name__})") from None


def _decode(text: str) -> Any:
    value, end = raw_decode(text)
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def json_candidates(text: str) -> Iterator[Any]:
    """JSON values in a reply, most likely first: the whole reply, each fenced block, then each object
    that starts at a '{' inside prose (a position inside an object already read is skipped; the tries
    that fail stop after reading MAX_SCAN_CHARS characters between them)."""
    stripped = text.strip().lstrip("\ufeff")
    try:
        yield _decode(stripped)
    except ValueError:
        pass
    for _tag, body in fenced_blocks(text):
        try:
            yield _decode(body.strip())
        except ValueError:
            continue
    pos, tried, scanned = 0, 0, 0
    while tried < MAX_SCANNED and scanned < MAX_SCAN_CHARS:
        start = text.find("{", pos)
        if start < 0:
            return
        tried += 1
        try:
            value, end = raw_decode(text, start)
        except ValueError as exc:
            scanned += max(getattr(exc, "pos", start) - start, 1)
            pos = start + 1
            continue
        yield value
        pos = end


def loads_lenient(text: str) -> Any:
    """The JSON value a text is, or None when it is not JSON."""
    try:
        return _decode(text.strip().lstrip("\ufeff"))
    except ValueError:
        return None


def find_object(text: str, keys: Iterable[str]) -> Optional[dict[str, Any]]:
    """The first JSON object in the reply that has one of `keys` (also one level down, for a model that
    wraps its answer as `{"reflection": {...}}`); None when there is none."""
    wanted = set(keys)
    for value in json_candidates(text):
        if not isinstance(value, dict):
            continue
        if wanted & value.keys():
            return value
        for inner in value.values():
            if isinstance(inner, dict) and wanted & inner.keys():
                return inner
    return None


def any_json(text: str) -> bool:
    """Whether the reply holds any JSON object or array at all."""
    return any(isinstance(v, (dict, list)) for v in json_candidates(text))


# ------------------------------------------------------------------------------ code in the reply


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Closed ``` blocks as (tag in lower case, body)."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _code_blocks(blocks: list[tuple[str, str]], language: Optional[str]) -> list[str]:
    """Bodies that may be the program: the language's own tags first; else untagged blocks and unknown
    tags (blocks in another known language, or of data and output, are never the program)."""
    own = LANGUAGE_TAGS.get(language or "", frozenset())
    known = frozenset().union(*LANGUAGE_TAGS.values())
    blocks = [(tag, b) for tag, b in blocks if b.strip() and not isinstance(loads_lenient(b), dict | list)]
    mine = [b for tag, b in blocks if tag in own]
    if mine:
        return mine
    others = known - own if language in LANGUAGE_TAGS else frozenset()
    return [b for tag, b in blocks if tag not in NOT_CODE_TAGS and tag not in others]


def code_in_text(text: str, language: Optional[str] = None) -> Optional[str]:
    """The program in a reply that is not usable JSON: the matching (else the longest) fenced block, an
    unclosed last fence (a reply cut off at the cap), or the reply itself when it is all code."""
    blocks = _code_blocks(fenced_blocks(text), language)
    if blocks:
        return tidy_code(max(blocks, key=len), language)
    if text.lstrip().startswith(("{", "[")):
        return None  # a JSON reply (perhaps cut off), never a program
    closed_end = max((m.end() for m in _FENCE.finditer(text)), default=0)
    opened = _OPEN_FENCE.search(text, closed_end)  # a fence opened after the last closed block, never closed
    if opened is not None:
        tag = opened.group(1).lower()
        if _code_blocks([(tag, opened.group(2))], language):
            return tidy_code(opened.group(2), language)
        return None
    if "```" not in text:
        code = unfenced_code(text, language)
        return None if code is None else tidy_code(code, language)
    return None


def unwrap_code(code: str, language: Optional[str] = None) -> str:
    """A JSON `code` field as a program: a field that is a fenced block is unfenced; one that is prose
    around a fenced block (Python: that does not parse as it is) is the block; a double-escaped program
    is restored. A fence inside the program itself, in a string literal, is left alone."""
    body = code.strip()
    if body.startswith("```"):
        blocks = _code_blocks(fenced_blocks(body), language)
        if blocks:
            code = max(blocks, key=len)
        else:  # an unclosed fence, or a program with escaped newlines
            opening = _FENCE_LINE.match(body)
            code = body[opening.end() if opening else 0:]
            code = code[:-3] if code.endswith("```") else code
    elif "```" in code and not _whole_program(code, language):
        blocks = _code_blocks(fenced_blocks(code), language)
        if language in (None, "python"):
            blocks = [b for b in blocks if _parses(textwrap.dedent(b))] or blocks
        if blocks:
            code = max(blocks, key=len)
    return tidy_code(code, language)


def _whole_program(code: str, language: Optional[str]) -> bool:
    """Whether a field with a fence in it is a program as it is: Python that parses; in another language
    one that does not start with a sentence or a label (`Here you go:`)."""
    if language in (None, "python"):
        return _parses(textwrap.dedent(code))
    first = next((line for line in code.splitlines() if line.strip()), "")
    return not (is_sentence(first) or is_label(first))


def tidy_code(code: str, language: Optional[str] = None) -> str:
    code = textwrap.dedent(code.strip("\n")).rstrip()
    if language in (None, "python") and "\n" not in code and "\\n" in code and not _parses(code):
        unescaped = code.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
        if _parses(unescaped):
            return textwrap.dedent(unescaped.strip("\n")).rstrip()
    return code


def _parses(code: str) -> bool:
    return parse_python(code) is not None


# ------------------------------------------------------------------------------- loose values


def as_text(value: Any, limit: int = 4000) -> str:
    """A field the model should have written as a string: null is "", a list is its lines, anything
    else its JSON; clipped to `limit` characters."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list):
        text = "\n".join(as_text(v, limit) for v in value if v is not None)
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def as_bool(value: Any) -> bool:
    """`true`, "true", "yes", 1 -> True; everything else (null, "false", "no", 0, junk) -> False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "y", "1")
    if isinstance(value, bool | int | float):
        return bool(value)
    return False


def as_id(value: Any) -> Optional[str]:
    """A bullet id as a model may write it: a string, `[py-00042]`, a number, `{"id": ...}`."""
    if isinstance(value, dict):
        value = value.get("id", value.get("bullet_id"))
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip().strip("`'\"")
    if text.startswith("[") and text.endswith("]") and "[" not in text[1:-1] and "]" not in text[1:-1]:
        text = text[1:-1]  # `[py-00042]`, as the playbook shows it (no regex: a long id stays linear)
    text = text.strip()[:MAX_ID_CHARS]
    return text or None


def as_ids(value: Any, limit: int = MAX_IDS) -> list[str]:
    """Bullet ids from a list (or one comma-separated string), stripped, without empties or repeats."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[Any] = [p for p in re.split(r"[,\s]+", value) if p]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    out: list[str] = []
    for item in items:
        bid = as_id(item)
        if bid is not None and bid not in out:
            out.append(bid)
            if len(out) >= limit:
                break
    return out


def json_safe(value: Any, limit: int = 300, depth: int = 0) -> Any:
    """A raw value from a reply as plain JSON for the trace: long strings clipped, big lists cut."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + " ..."
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return as_text(value, limit)
    if isinstance(value, dict):
        return {str(k)[:limit]: json_safe(v, limit, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list | tuple):
        return [json_safe(v, limit, depth + 1) for v in list(value)[:20]]
    return as_text(value, limit)
