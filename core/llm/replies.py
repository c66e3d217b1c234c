"""Reading a model's reply: the JSON object in it, whatever the model wrapped around it."""

import json
import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError


def extract_json(text: str) -> Any:
    """The JSON object in a reply, tolerating code fences and chatter around it."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.S)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    return json.loads(candidate[start:end + 1])


@lru_cache(maxsize=64)
def wire_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to the server: the model's own tight one when it has it (built once per
    reply shape; every request of a role sends the same one)."""
    own = getattr(schema, "wire_schema", None)
    return own() if callable(own) else schema.model_json_schema()


def parse_reply(schema: type[BaseModel], text: str) -> Any:
    """The reply as a `schema` instance; ValueError or ValidationError when it cannot be used."""
    own = getattr(schema, "from_reply", None)
    if callable(own):
        return own(text)
    return schema.model_validate(extract_json(text))


def describe_invalid(exc: Exception) -> str:
    """A short reason a model can act on when asked to repair its reply."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]
        return "; ".join(parts)
    return str(exc)[:300]
