"""Typed delta operations: the only way a playbook changes.

The Curator, a reviewer in the diff viewer, the HTTP service and imports all
speak this one shape, so validation lives in one place.
"""

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from core.errors import Conflict, Invalid

OpType = Literal["ADD", "UPDATE", "TAG", "REMOVE", "MERGE"]
Tag = Literal["helpful", "harmful", "neutral"]
OP_TYPES: tuple[str, ...] = ("ADD", "UPDATE", "TAG", "REMOVE", "MERGE")
TAGS: tuple[str, ...] = ("helpful", "harmful", "neutral")
MAX_BULLET_CHARS = 4000
MAX_SECTION_CHARS = 64
MAX_NOTE_CHARS = 4000  # justification, evidence
MAX_OPS = 1000  # operations in one delta
MAX_MERGE_IDS = 100
DEFAULT_SECTION = "strategies"
# Every id a bullet, delta or job can have (generated: `b-00001`, `d-1a2b3c4d5e6f`; imported ids are checked
# against it too): no spaces, slashes or markup.
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
BulletRef = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class DeltaError(Invalid):
    """A delta that cannot be applied; the playbook was left unchanged. Invalid, so still a ValueError."""


class BulletMissing(DeltaError):
    """An op names a bullet that does not exist or was removed.

    Invalid as part of a delta (422); a route that names the bullet in its URL turns it into NotFound.
    """

    code = "bullet_missing"


class DeltaConflict(Conflict, DeltaError):
    """The op was fine when proposed but the playbook moved on: already decided, or its bullet changed since.

    Conflict comes first in the bases, so the service answers 409; `except DeltaError` still catches it.
    """

    code = "delta_conflict"


def normalize_section(section: Any) -> str:
    """A section name as stored: lower case, `_` between words; the default for anything empty (a number
    from a file is read as text)."""
    raw = section if isinstance(section, str) else "" if section is None or isinstance(section, (dict, list)) \
        else str(section)
    text = re.sub(r"[^a-z0-9]+", "_", raw.strip().lower()).strip("_")
    return (text or DEFAULT_SECTION)[:MAX_SECTION_CHARS]


def check_content(content: Optional[str]) -> str:
    text = (content or "").strip()
    if not text:
        raise ValueError("bullet content is empty")
    if len(text) > MAX_BULLET_CHARS:
        raise ValueError(f"bullet content is {len(text):,} characters; the limit is {MAX_BULLET_CHARS:,}")
    return text


class OpIn(BaseModel):
    """One operation as proposed; which fields matter depends on `type`."""

    type: OpType
    section: Optional[str] = Field(None, max_length=200)
    content: Optional[str] = Field(None, description="the bullet's text: ADD, UPDATE and MERGE need it",
                                   json_schema_extra={"maxLength": MAX_BULLET_CHARS})
    bullet_id: Optional[BulletRef] = Field(None, description="the bullet an UPDATE, TAG or REMOVE names; it must "
                                                             "exist and be active")
    bullet_ids: list[BulletRef] = Field(default_factory=list, max_length=MAX_MERGE_IDS,
                                        description="the bullets a MERGE combines (two or more, each existing)")
    tag: Optional[Tag] = None
    justification: str = Field("", max_length=MAX_NOTE_CHARS)
    evidence: str = Field("", max_length=MAX_NOTE_CHARS)

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("tag", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fields_for_type(self) -> "OpIn":
        t = self.type
        if self.content is not None and len(self.content) > MAX_BULLET_CHARS:
            raise ValueError(f"bullet content is {len(self.content):,} characters; the limit is {MAX_BULLET_CHARS:,}")
        if t in ("ADD", "UPDATE", "MERGE"):
            self.content = check_content(self.content)
        if t in ("UPDATE", "TAG", "REMOVE") and not self.bullet_id:
            raise ValueError(f"{t} needs bullet_id")
        if t == "TAG" and self.tag is None:
            raise ValueError("TAG needs tag: helpful, harmful or neutral")
        if t == "MERGE":
            ids = list(dict.fromkeys(self.bullet_ids))
            if len(ids) < 2:
                raise ValueError("MERGE needs at least two distinct bullet_ids")
            self.bullet_ids = ids
        if self.section is not None:
            self.section = normalize_section(self.section)
        return self


class DeltaIn(BaseModel):
    reasoning: str = Field("", max_length=20_000)
    operations: list[OpIn] = Field(default_factory=list, max_length=MAX_OPS)
