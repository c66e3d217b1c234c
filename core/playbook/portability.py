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
from core.playbook.ops import ID_RE, DeltaError, check_content, normalize_section
from core.playbook.store import ensure_playbook
from core.storage.db import read_session, write_session
from core.storage.models import Bullet, Delta, Playbook, utcnow

FORMAT_TAG = "ace-playground/1"
MAX_IMPORT_BYTES = 50_000_000
MAX_JSON_DEPTH = 32  # arrays and objects; our export nests 3 deep, a skillbook 3
MAX_JSON_DIGITS = 1000  # in a row: Python's parser refuses integers past 4,300 digits with a bare ValueError

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")
_LONG_NUMBER = re.compile(rf"\d{{{MAX_JSON_DIGITS + 1},}}")


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


def json_problem(text: str, limit: int = MAX_JSON_DEPTH, brackets: bool = True) -> Optional[tuple[str, str]]:
    """Why JSON text must not be parsed, as (type, message): arrays and objects nested more than `limit`
    deep ("json_too_deep": Python's parser recurses once per level, and 100k levels is a RecursionError),
    brackets that no JSON document has (unless `brackets` is false: the caller parses it to say where),
    or a number of more than 1,000 digits (the parser's bare ValueError); None when it may be parsed.
    Strings are skipped; regular expressions do the scanning, so a large file costs a few passes in C."""
    bare = _JSON_STRING.sub("", text)
    if _LONG_NUMBER.search(bare):
        return "json_invalid", f"invalid JSON: a number has more than {MAX_JSON_DIGITS:,} digits"
    s = _NOT_BRACKET.sub("", bare)
    for _ in range(limit):  # each pass removes the innermost level: `[]` and `{}` with nothing inside
        if not s:
            return None
        t = _EMPTY_PAIR.sub("", s)
        if len(t) == len(s):
            return ("json_invalid", "invalid JSON: its brackets do not match") if brackets else None
        s = t
    return ("json_too_deep", f"the JSON nests arrays and objects more than {limit} levels deep") if s else None


def load_json(text: str) -> Any:
    """JSON text parsed, once `json_problem` finds nothing wrong with it; DeltaError (422) otherwise."""
    problem = json_problem(text, brackets=False)  # brackets that do not match: the parser says where
    if problem is not None:
        raise DeltaError(problem[1])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeltaError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} "
                         "(is the file truncated?)") from None
    except RecursionError:  # unmatched brackets nested past the parser's limit before it saw the mismatch
        raise DeltaError(f"invalid JSON: its brackets do not match, nested more than {MAX_JSON_DEPTH} levels "
                         "deep") from None
    except ValueError as exc:  # not reached with the checks above; never a 500 if it were
        raise DeltaError(f"invalid JSON: {exc}") from None


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    if len(data) > MAX_IMPORT_BYTES:
        raise DeltaError(f"import file is {len(data):,} bytes; the limit is {MAX_IMPORT_BYTES:,}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeltaError(f"import file is not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from None


MAX_COUNT = 2**31 - 1


def _int(v: Any) -> int:
    """A counter as stored: 0 for what is not a number, clamped to 0..2**31-1 (1e999 is inf, not an error)."""
    try:
        return min(MAX_COUNT, max(0, int(v or 0)))
    except (TypeError, ValueError, OverflowError):
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
    bullets = doc.get("bullets")
    if not isinstance(bullets, list):
        raise DeltaError("our export needs 'bullets': a list of bullet objects")
    for i, e in enumerate(bullets):
        if not isinstance(e, dict):
            raise DeltaError(f"bullet {i + 1} is not an object")
        content = e.get("content")
        if not isinstance(content, str):
            raise DeltaError(f"bullet {i + 1}: content must be text (got {type(content).__name__})")
        out.append(ImportedBullet(
            id=_text(e.get("id")), section=normalize_section(e.get("section")), content=content,
            helpful=_int(e.get("helpful")), harmful=_int(e.get("harmful")), neutral=_int(e.get("neutral")),
            status="removed" if e.get("status") == "removed" else "active", merged_into=_text(e.get("merged_into")),
            source_episode_id=_text(e.get("source_episode_id"))))
    return out


def _text(v: Any) -> Optional[str]:
    """A reference to a bullet or episode as text (a file may write ids as numbers); None when absent,
    empty or not an id at all."""
    if v is None or v == "" or isinstance(v, (dict, list)):
        return None
    text = str(v)
    return text if ID_RE.match(text) else None


def _meta(doc: dict[str, Any]) -> dict[str, Any]:
    """The playbook fields of our export that an import uses, as short text (anything else is dropped)."""
    pb = doc.get("playbook")
    if pb is None:
        return {}
    if not isinstance(pb, dict):
        raise DeltaError("'playbook' must be an object (name, description, environment)")
    limits = {"name": 200, "environment": 64, "description": 2000}
    return {k: v[:n] for k, n in limits.items() if isinstance(v := pb.get(k), str) and v.strip()}


_HEADING = re.compile(r"^(#{2,6})\s+(\S.*)$")  # "## section" (a "# title" names the document, not a section)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,6}[.)])\s+(\S.*)$")  # "- a strategy", "* ...", "1. ..."


def parse_text(text: str) -> list[ImportedBullet]:
    """ace-agent/ace's text playbook, our Markdown export, and plain Markdown: every list item a bullet,
    under the heading above it as its section."""
    section = "general"
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if heading := _HEADING.match(line):
            section = normalize_section(heading.group(2))
            continue
        parsed = parse_line(line)
        if parsed is not None:
            out.append(ImportedBullet(id=parsed.bullet_id, section=section, content=parsed.content,
                                      helpful=parsed.helpful, harmful=parsed.harmful, neutral=parsed.neutral or 0))
        elif line.strip().startswith("[") and "::" in line:
            raise DeltaError(f"line {n} looks like a bullet but does not parse: {line[:80]!r}")
        elif item := _LIST_ITEM.match(line):
            out.append(ImportedBullet(id=None, section=section, content=item.group(1).strip()))
    if not out:
        raise DeltaError("no bullets found: expected a Markdown list ('- a strategy' under '## a section'), "
                         "or lines like '[str-00001] helpful=5 harmful=0 :: content'")
    return out


def parse(data: bytes | str) -> tuple[str, list[ImportedBullet], dict[str, Any]]:
    """(format name, bullets, playbook metadata) for any supported format."""
    text = _decode(data)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        doc = load_json(text)
        if doc.get("format") == FORMAT_TAG:
            return "ace-playground", parse_ours(doc), _meta(doc)
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
            bid = it.id if it.id and it.id not in taken and ID_RE.match(it.id) else None
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
