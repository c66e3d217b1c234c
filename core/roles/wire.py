"""The JSON schemas sent to the model: tight enough that a grammar-constrained server (llama.cpp, vLLM,
Ollama) cannot produce what the issue saw, nulls in required fields and arrays that never end.

Written by hand, inline (no `$ref`, friendlier to grammar compilers): no `null` type anywhere, every
object closed (`additionalProperties: false`) with its `required` list, every array and string bounded,
the Curator's operations one shape per type. Every bound stays under 2,000 (llama.cpp's grammar compiler
answers 400 to larger repetition bounds) and `code` has none at all.

The string bounds are set so that a Reflector's or a Reviewer's longest answer stays near its role's
default token cap (about four characters a token); a Curator's eight longest operations would not, so
its prompt asks for at most five short ones, and a reply cut off at the cap is the client's to repair.
"""

from typing import Any, Optional

from core.playbook.ops import TAGS

MAX_BOUND = 1999  # every maxLength / maxItems stays below 2,000
ID_CHARS = 64  # a bullet id's longest form (the bullet table's column)
SECTION_CHARS = 64
CONTENT_CHARS = 1000
NOTE_CHARS = 300  # justification, evidence
ISSUE_CHARS = 200
MAX_BULLET_IDS = 10
MAX_BULLET_TAGS = 10
MAX_OPERATIONS = 8
MAX_MERGED = 4
MAX_ISSUES = 8
OP_TYPES_IN_ORDER = ("ADD", "UPDATE", "TAG", "REMOVE", "MERGE")


def text(max_length: int, min_length: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if min_length:
        out["minLength"] = min_length
    out["maxLength"] = max_length
    return out


def one_of(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def array(items: dict[str, Any], max_items: int, min_items: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    out["maxItems"] = max_items
    return out


def obj(properties: dict[str, Any], required: Optional[list[str]] = None) -> dict[str, Any]:
    """A closed object; every property required unless `required` names fewer."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


def bullet_id() -> dict[str, Any]:
    return text(ID_CHARS, 1)


def code_schema(language: Optional[str], reasoning_chars: int) -> dict[str, Any]:
    """The Generator's and the Optimizer's answer; `language` pins the language field when known."""
    return obj({
        "reasoning": text(reasoning_chars),
        "bullet_ids": array(bullet_id(), MAX_BULLET_IDS),
        "code": {"type": "string", "minLength": 1},  # no maxLength: the program is as long as it must be
        "language": one_of(language) if language else text(20, 1),
    })


def reflector_schema() -> dict[str, Any]:
    return obj({
        "reasoning": text(1000),
        "error_identification": text(600),
        "root_cause_analysis": text(600),
        "correct_approach": text(600),
        "key_insight": text(400),
        "bullet_tags": array(obj({"id": bullet_id(), "tag": one_of(*TAGS)}), MAX_BULLET_TAGS),
    })


def op_schemas() -> list[dict[str, Any]]:
    """One closed shape per operation type, each with only its own fields."""
    note = {"justification": text(NOTE_CHARS), "evidence": text(NOTE_CHARS)}
    content = text(CONTENT_CHARS, 1)
    return [
        obj({"type": one_of("ADD"), "section": text(SECTION_CHARS, 1), "content": content, **note},
            ["type", "section", "content"]),
        obj({"type": one_of("UPDATE"), "bullet_id": bullet_id(), "content": content, **note},
            ["type", "bullet_id", "content"]),
        obj({"type": one_of("TAG"), "bullet_id": bullet_id(), "tag": one_of(*TAGS), **note},
            ["type", "bullet_id", "tag"]),
        obj({"type": one_of("REMOVE"), "bullet_id": bullet_id(), **note}, ["type", "bullet_id"]),
        obj({"type": one_of("MERGE"), "bullet_ids": array(bullet_id(), MAX_MERGED, 2), "content": content, **note},
            ["type", "bullet_ids", "content"]),
    ]


def curator_schema() -> dict[str, Any]:
    return obj({
        "reasoning": text(800),
        "operations": array({"anyOf": op_schemas()}, MAX_OPERATIONS),
    })


def reviewer_schema() -> dict[str, Any]:
    return obj({
        "reasoning": text(600),
        "needs_optimization": {"type": "boolean"},
        "issues": array(text(ISSUE_CHARS, 1), MAX_ISSUES),
        "suggestions": text(600),
        "bullet_ids": array(bullet_id(), MAX_BULLET_IDS),
    })
