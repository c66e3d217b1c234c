"""Export and import playbooks.

Formats: our own lossless JSON (every bullet with counters, status and
provenance), readable Markdown, the ace-agent/ace text playbook (`## SECTION`
then `[id] helpful=X harmful=Y :: content`), and the kayba-ai
agentic-context-engine skillbook JSON (`{"skills": ...}` and the older
`{"bullets": ...}`). An import is one delta-like transaction: a bad file
changes nothing.
"""

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from sqlmodel import col, select

from core.playbook.applier import Applier
from core.playbook.lines import bullet_line, parse_line
from core.playbook.ops import DeltaError, check_content, normalize_section
from core.playbook.store import ensure_playbook
from core.storage.db import read_session, write_session
from core.storage.models import Bullet, Delta, Playbook, utcnow

FORMAT_TAG = "ace-playground/1"
MAX_IMPORT_BYTES = 50_000_000


@dataclass
class ImportedBullet:
    id: Optional[str]
    section: str
    content: str
    helpful: int = 0
    harmful: int = 0
    neutral: int = 0
    status: str = "active"
    merged_into: Optional[str] = None
    source_episode_id: Optional[str] = None


# -------------------------------------------------------------------- export


def export_json(playbook_id: str) -> str:
    with read_session() as s:
        pb = s.get(Playbook, playbook_id)
        if pb is None:
            raise KeyError(f"playbook {playbook_id!r} does not exist")
        bullets = s.exec(select(Bullet).where(Bullet.playbook_id == playbook_id).order_by(col(Bullet.pk))).all()
    doc = {
        "format": FORMAT_TAG,
        "playbook": {"id": pb.id, "name": pb.name, "description": pb.description,
                     "environment": pb.environment, "version": pb.current_version},
        "bullets": [
            {"id": b.id, "section": b.section, "content": b.content, "helpful": b.helpful, "harmful": b.harmful,
             "neutral": b.neutral, "status": b.status, "merged_into": b.merged_into,
             "source_episode_id": b.source_episode_id, "created_at": b.created_at.isoformat(),
             "updated_at": b.updated_at.isoformat()}
            for b in bullets
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


def export_markdown(playbook_id: str) -> str:
    with read_session() as s:
        pb = s.get(Playbook, playbook_id)
        if pb is None:
            raise KeyError(f"playbook {playbook_id!r} does not exist")
        bullets = s.exec(select(Bullet).where(Bullet.playbook_id == playbook_id, Bullet.status == "active")
                         .order_by(col(Bullet.pk))).all()
    by_section: dict[str, list[Bullet]] = {}
    for b in bullets:
        by_section.setdefault(b.section, []).append(b)
    out = [f"# {pb.name}", "", f"Playbook `{pb.id}`, version {pb.current_version}, {len(bullets)} bullets.", ""]
    for section, items in by_section.items():
        out.append(f"## {section}")
        out.extend(bullet_line(b) for b in items)
        out.append("")
    return "\n".join(out)


# -------------------------------------------------------------------- parsing


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    if len(data) > MAX_IMPORT_BYTES:
        raise DeltaError(f"import file is {len(data):,} bytes; the limit is {MAX_IMPORT_BYTES:,}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeltaError(f"import file is not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from None


def _int(v: Any) -> int:
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def _skill_content(entry: dict[str, Any]) -> str:
    if entry.get("content"):
        return str(entry["content"])
    parts = [str(entry[k]) for k in ("issue", "insight") if entry.get(k)]
    return "\n".join(parts)


def parse_kayba(doc: dict[str, Any]) -> list[ImportedBullet]:
    entries = doc.get("skills") if "skills" in doc else doc.get("bullets")
    if not isinstance(entries, dict):
        raise DeltaError("skillbook JSON needs a 'skills' (or 'bullets') object keyed by id")
    out = []
    for key, e in entries.items():
        if not isinstance(e, dict):
            raise DeltaError(f"skillbook entry {key!r} is not an object")
        active = e.get("active", True) and e.get("status", "active") == "active"
        out.append(ImportedBullet(
            id=str(e.get("id") or key), section=normalize_section(e.get("section")), content=_skill_content(e),
            helpful=_int(e.get("helpful_count", e.get("helpful"))),
            harmful=_int(e.get("harmful_count", e.get("harmful"))),
            neutral=_int(e.get("neutral_count", e.get("neutral"))), status="active" if active else "removed"))
    return out


def parse_ours(doc: dict[str, Any]) -> list[ImportedBullet]:
    out = []
    for i, e in enumerate(doc.get("bullets") or []):
        if not isinstance(e, dict):
            raise DeltaError(f"bullet {i + 1} is not an object")
        out.append(ImportedBullet(
            id=_text(e.get("id")), section=normalize_section(e.get("section")), content=str(e.get("content") or ""),
            helpful=_int(e.get("helpful")), harmful=_int(e.get("harmful")), neutral=_int(e.get("neutral")),
            status="removed" if e.get("status") == "removed" else "active", merged_into=_text(e.get("merged_into")),
            source_episode_id=_text(e.get("source_episode_id"))))
    return out


def _text(v: Any) -> Optional[str]:
    """A reference field as text (a file may write ids as numbers); None when absent or empty."""
    return None if v is None or v == "" else str(v)


def parse_text(text: str) -> list[ImportedBullet]:
    """ace-agent/ace's text playbook, and our Markdown export."""
    section = "general"
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            section = normalize_section(line[3:])
            continue
        parsed = parse_line(line)
        if parsed is not None:
            out.append(ImportedBullet(id=parsed.bullet_id, section=section, content=parsed.content,
                                      helpful=parsed.helpful, harmful=parsed.harmful, neutral=parsed.neutral or 0))
        elif line.strip().startswith("[") and "::" in line:
            raise DeltaError(f"line {n} looks like a bullet but does not parse: {line[:80]!r}")
    if not out:
        raise DeltaError("no bullets found: expected lines like '[str-00001] helpful=5 harmful=0 :: content'")
    return out


def parse(data: bytes | str) -> tuple[str, list[ImportedBullet], dict[str, Any]]:
    """(format name, bullets, playbook metadata) for any supported format."""
    text = _decode(data)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeltaError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} "
                             "(is the file truncated?)") from None
        if doc.get("format") == FORMAT_TAG:
            return "ace-playground", parse_ours(doc), dict(doc.get("playbook") or {})
        if "skills" in doc or "bullets" in doc:
            return "kayba-skillbook", parse_kayba(doc), {}
        raise DeltaError("unknown JSON playbook: expected our export, or a skillbook with 'skills' or 'bullets'")
    return "ace-text", parse_text(text), {}


# -------------------------------------------------------------------- import


def import_playbook(playbook_id: str, data: bytes | str, replace: bool = False, actor: str = "user") -> tuple[int, int]:
    """Add the file's bullets to a playbook (ids kept when free) as one version.

    Returns (bullets imported, new version). With `replace`, the playbook's
    current bullets are removed first, in the same version.
    """
    fmt, items, meta = parse(data)
    for i, it in enumerate(items):
        try:
            it.content = check_content(it.content)
        except ValueError as exc:
            raise DeltaError(f"bullet {i + 1} ({it.id or 'no id'}): {exc}") from None
    with write_session() as s:
        pb = ensure_playbook(s, playbook_id, meta.get("name"), meta.get("environment"), meta.get("description") or "")
        delta = Delta(playbook_id=pb.id, reasoning=f"import ({fmt}, {len(items)} bullets)", source="import",
                      status="applied", base_version=pb.current_version, decided_at=utcnow())
        s.add(delta)
        s.flush()
        ap = Applier(s, pb, None, delta.id)
        if replace:
            for b in s.exec(select(Bullet).where(Bullet.playbook_id == pb.id, Bullet.status == "active")):
                ap.touch(b)
                b.status = "removed"
                ap.count_change -= 1
                ap.mark(b)
        taken = set(s.exec(select(Bullet.id).where(Bullet.playbook_id == pb.id)))
        _bump_seq(pb, taken | {it.id for it in items if it.id})  # generated ids start past every id the file names
        for it in items:
            bid = it.id if it.id and it.id not in taken and re.match(r"^[A-Za-z0-9_.-]{1,64}$", it.id) else None
            b = ap.new_bullet(it.section, it.content, it.helpful, it.harmful, it.neutral, bullet_id=bid, check_id=False)
            taken.add(b.id)
            b.source_episode_id = it.source_episode_id
            if it.status == "removed":
                b.status, b.merged_into = "removed", it.merged_into
                ap.count_change -= 1
        _bump_seq(pb, taken)
        delta.version = ap.finish(f"imported {len(items)} bullets ({fmt})")
        return len(items), delta.version


def _bump_seq(pb: Playbook, ids: set[str]) -> None:
    """Keep generated ids clear of imported ones like py-00042."""
    nums = [int(m.group(1)) for i in ids if (m := re.match(r"^[A-Za-z]+-(\d+)$", i))]
    if nums:
        pb.next_seq = max(pb.next_seq, max(nums) + 1)
