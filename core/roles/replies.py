"""Each role's fields read leniently out of a raw reply (the schemas' `from_reply` builds on these).

What is usable is kept, what is not is dropped with a plain reason where the trace should show it
(the Curator's operations), and a reply with nothing usable raises ValueError with an excerpt, so the
client's repair round can say what was wrong.
"""

import functools
import re
from collections.abc import Callable
from typing import Any, Optional, ParamSpec, TypeVar

from pydantic import ValidationError

from core.playbook.ops import OP_TYPES, TAGS, OpIn
from core.roles.parsing import (
    MAX_IDS,
    as_bool,
    as_id,
    as_ids,
    as_text,
    code_in_text,
    excerpt,
    fenced_blocks,
    find_object,
    json_safe,
    loads_lenient,
    raw_decode,
    unwrap_code,
)

MAX_TAGS = 20
MAX_OPS = 20
MAX_ISSUES = 10
MAX_FIELD_CHARS = 4000
CODE_KEYS = ("code", "reasoning", "bullet_ids", "language")
REFLECTION_TEXT = ("reasoning", "error_identification", "root_cause_analysis", "correct_approach", "key_insight")
REFLECTION_KEYS = (*REFLECTION_TEXT, "bullet_tags")
CURATION_KEYS = ("reasoning", "operations")
REVIEW_KEYS = ("reasoning", "needs_optimization", "issues", "suggestions", "bullet_ids")
OP_FIELDS: dict[str, tuple[str, ...]] = {  # what each type may carry; a stray bullet_id on an ADD is not kept
    "ADD": ("section", "content"),
    "UPDATE": ("bullet_id", "content", "section"),
    "TAG": ("bullet_id", "tag"),
    "REMOVE": ("bullet_id",),
    "MERGE": ("bullet_ids", "content", "section"),
}
_TAG_TEXT = re.compile(r"^\s*\[?([A-Za-z0-9_.-]+)\]?\s*[:=]\s*(\w+)\s*$")
MAX_TAG_TEXT = 200  # a "py-00001: helpful" entry longer than this is clipped before the pattern sees it
P = ParamSpec("P")
R = TypeVar("R")


def readable(read: Callable[P, R]) -> Callable[P, R]:
    """A reply reader that raises only ValueError for a reply it cannot use: what Python itself raises
    on a pathological reply (nesting too deep, a parser out of memory) is one more unusable reply."""
    @functools.wraps(read)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return read(*args, **kwargs)
        except (RecursionError, MemoryError, SyntaxError, OverflowError) as exc:
            text = args[0] if args and isinstance(args[0], str) else ""
            raise ValueError(f"the reply could not be read ({type(exc).__name__}): {excerpt(text)}") from None
    return guarded


def _no_object(text: str, what: str, keys: tuple[str, ...]) -> ValueError:
    start = text.find("{")
    if start < 0:
        return ValueError(f"no JSON object in the reply: {excerpt(text)}")
    try:
        raw_decode(text, start)
    except ValueError as exc:
        return ValueError(f"the JSON object in the reply is cut off or invalid ({exc}): {excerpt(text)}")
    return ValueError(f"the JSON in the reply has none of the {what} fields ({', '.join(keys)}): {excerpt(text)}")


# ----------------------------------------------------------------------- Generator, Optimizer


def _prose(text: str) -> str:
    """A reply's words around its code blocks: the reasoning of a model that answered in prose."""
    return as_text(" ".join(re.sub(r"```.*?(```|\Z)", " ", text, flags=re.S).split()), 1500)


@readable
def code_reply(text: str, language: Optional[str]) -> dict[str, Any]:
    """reasoning, bullet_ids, code, language: code from the JSON `code` field, else from a fenced block
    (the language's own, else the longest), else the reply itself when it is all code."""
    found = find_object(text, CODE_KEYS)
    code, reasoning = "", ""
    data: dict[str, Any] = found or {}
    raw = data.get("code")
    if isinstance(raw, list):
        raw = "\n".join(str(line) for line in raw)
    if isinstance(raw, str):
        code = unwrap_code(raw, language)
    reasoning = as_text(data.get("reasoning"), MAX_FIELD_CHARS)
    if not code.strip():
        code = code_in_text(text, language) or ""
        if code and found is None and "```" in text:
            reasoning = _prose(text)
    if not code.strip():
        raise ValueError(f"no code in the reply: {excerpt(text)}")
    lang = data.get("language")
    out_language = lang.strip()[:20] if isinstance(lang, str) and lang.strip() else (language or "python")
    return {"reasoning": reasoning, "bullet_ids": as_ids(data.get("bullet_ids"), MAX_IDS), "code": code,
            "language": out_language}


# -------------------------------------------------------------------------------------- Reflector


def bullet_tags(value: Any, limit: int = MAX_TAGS) -> list[dict[str, str]]:
    """`[{"id", "tag"}]` from what a model wrote; entries without an id or with an unknown tag are dropped."""
    if isinstance(value, dict):  # {"py-00001": "helpful", ...}
        value = [{"id": k, "tag": v} for k, v in value.items()]
    if not isinstance(value, list):
        return []
    out: dict[str, str] = {}
    for entry in value:
        bid, tag = None, None
        if isinstance(entry, dict):
            bid = as_id(entry.get("id", entry.get("bullet_id")))
            tag = entry.get("tag")
        elif isinstance(entry, str) and (m := _TAG_TEXT.match(entry[:MAX_TAG_TEXT])):
            bid, tag = m.group(1), m.group(2)
        tag = tag.strip().lower() if isinstance(tag, str) else None
        if bid and tag in TAGS and bid not in out:
            out[bid] = tag
            if len(out) >= limit:
                break
    return [{"id": bid, "tag": tag} for bid, tag in out.items()]


@readable
def reflection_reply(text: str) -> dict[str, Any]:
    found = find_object(text, REFLECTION_KEYS)
    if found is None:
        raise _no_object(text, "reflection", REFLECTION_KEYS)
    out: dict[str, Any] = {k: as_text(found.get(k), MAX_FIELD_CHARS) for k in REFLECTION_TEXT}
    out["bullet_tags"] = bullet_tags(found.get("bullet_tags"))
    return out


# ---------------------------------------------------------------------------------------- Curator


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true or false", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__)


def _plain(exc: ValidationError) -> str:
    msgs = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors(include_url=False)[:3]]
    return "; ".join(msgs)


def read_op(raw: Any) -> tuple[Optional[OpIn], str]:
    """One proposed operation as an `OpIn`, or None and the reason in plain words."""
    if not isinstance(raw, dict):
        return None, f"not an operation object (got {_kind(raw)})"
    kind = raw.get("type", raw.get("op", raw.get("operation")))
    if not isinstance(kind, str) or not kind.strip():
        return None, "the operation has no type (ADD, UPDATE, TAG, REMOVE or MERGE)"
    t = kind.strip().upper()
    if t not in OP_TYPES:
        return None, f"unknown operation type {t[:30]!r} (ADD, UPDATE, TAG, REMOVE or MERGE)"
    data: dict[str, Any] = {"type": t, "justification": as_text(raw.get("justification"), 2000),
                            "evidence": as_text(raw.get("evidence"), 2000)}
    fields = OP_FIELDS[t]
    if "content" in fields:
        data["content"] = as_text(raw.get("content"), 100_000)
        if not data["content"]:
            return None, f"{t} needs content"
    if "section" in fields:
        section = as_text(raw.get("section"), 200)
        data["section"] = section or None
    if "bullet_id" in fields:
        data["bullet_id"] = as_id(raw.get("bullet_id", raw.get("id")))
        if not data["bullet_id"]:
            return None, f"{t} needs bullet_id"
    if "tag" in fields:
        tag = raw.get("tag")
        data["tag"] = tag.strip().lower() if isinstance(tag, str) else None
        if data["tag"] not in TAGS:
            got = f" (got {as_text(tag, 30)!r})" if tag is not None else ""
            return None, f"TAG needs tag: helpful, harmful or neutral{got}"
    if "bullet_ids" in fields:
        data["bullet_ids"] = as_ids(raw.get("bullet_ids"), MAX_IDS)
        if len(data["bullet_ids"]) < 2:
            return None, "MERGE needs at least two distinct bullet_ids"
    try:
        return OpIn.model_validate(data), ""
    except ValidationError as exc:
        return None, f"{t}: {_plain(exc)}"


def read_ops(value: Any, limit: int = MAX_OPS) -> tuple[list[OpIn], list[dict[str, Any]]]:
    """Valid operations, and the dropped ones as `{"op": the op as given, "reason": ...}`."""
    if value is None:
        return [], []
    if isinstance(value, dict):  # one operation where a list was asked for
        value = [value]
    if not isinstance(value, list):
        return [], [{"op": json_safe(value), "reason": f"operations must be a list (got {_kind(value)})"}]
    ops: list[OpIn] = []
    dropped: list[dict[str, Any]] = []
    for raw in value[:limit]:
        op, reason = read_op(raw)
        if op is None:
            dropped.append({"op": json_safe(raw), "reason": reason})
        else:
            ops.append(op)
    if len(value) > limit:
        dropped.append({"op": {"not_considered": len(value) - limit},
                        "reason": f"{len(value) - limit} operations past the first {limit} were not considered"})
    return ops, dropped


def _bare_ops(text: str) -> Optional[list[Any]]:
    """A reply (or a fenced block of it) that is only a list of operations, or one operation object."""
    for body in [text, *(b for _tag, b in fenced_blocks(text))]:
        value = loads_lenient(body)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
        if isinstance(value, dict) and "type" in value:
            return [value]
    return None


@readable
def curation_reply(text: str) -> dict[str, Any]:
    found = find_object(text, CURATION_KEYS)
    if found is None:
        bare = _bare_ops(text)
        if bare is None:
            raise _no_object(text, "curation", CURATION_KEYS)
        found = {"operations": bare}
    ops, dropped = read_ops(found.get("operations"))
    return {"reasoning": as_text(found.get("reasoning"), MAX_FIELD_CHARS), "operations": ops, "dropped": dropped}


# --------------------------------------------------------------------------------------- Reviewer


def issues(value: Any, limit: int = MAX_ISSUES) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("issue", item.get("description", item))
        line = as_text(item, 1000)
        if line and line not in out:
            out.append(line)
            if len(out) >= limit:
                break
    return out


@readable
def review_reply(text: str) -> dict[str, Any]:
    found = find_object(text, REVIEW_KEYS)
    if found is None:
        raise _no_object(text, "review", REVIEW_KEYS)
    return {"reasoning": as_text(found.get("reasoning"), MAX_FIELD_CHARS),
            "needs_optimization": as_bool(found.get("needs_optimization")),
            "issues": issues(found.get("issues")),
            "suggestions": as_text(found.get("suggestions"), MAX_FIELD_CHARS),
            "bullet_ids": as_ids(found.get("bullet_ids"), MAX_IDS)}
