"""The bullet line, `[id] helpful=X harmful=Y :: content`: the one place it is written and read.

Prompts, the Markdown export and ace-agent/ace's text playbooks all use it; the
loop reads bullet ids back out of what an agent was shown.
"""

import re
from typing import Any, NamedTuple, Optional

BEGIN_MARK = "**PLAYBOOK_BEGIN**"
END_MARK = "**PLAYBOOK_END**"

# A line as written, or as imported: an optional list marker and an optional neutral count.
LINE_RE = re.compile(r"^\s*[-*]?\s*\[([A-Za-z0-9_.-]+)\]\s+helpful=(\d+)\s+harmful=(\d+)"
                     r"(?:\s+neutral=(\d+))?\s*::\s*(.*)$")
ID_RE = re.compile(r"\[([A-Za-z0-9_.-]+)\]\s+helpful=")
_MARKED = re.compile(re.escape(BEGIN_MARK) + r"(.*?)" + re.escape(END_MARK), re.S)


class ParsedLine(NamedTuple):
    bullet_id: str
    helpful: int
    harmful: int
    neutral: Optional[int]
    content: str


def format_line(bullet_id: str, helpful: int, harmful: int, content: str) -> str:
    """A plain function (not `str.format_map`): rendering a large playbook calls it once per bullet."""
    return f"[{bullet_id}] helpful={helpful} harmful={harmful} :: {content}"


def bullet_line(b: Any) -> str:
    """A bullet (anything with id, helpful, harmful and content) as a line."""
    return format_line(b.id, b.helpful, b.harmful, b.content)


def parse_line(line: str) -> Optional[ParsedLine]:
    """A line's parts, or None when it is not a bullet line."""
    m = LINE_RE.match(line)
    if m is None:
        return None
    neutral = int(m.group(4)) if m.group(4) is not None else None
    return ParsedLine(m.group(1), int(m.group(2)), int(m.group(3)), neutral, m.group(5))


def line_id(line: str) -> Optional[str]:
    """The bullet id a line starts with, or None (the UI highlights these in a prompt)."""
    m = ID_RE.match(line)
    return m.group(1) if m else None


def marked_bullet_ids(*texts: Optional[str]) -> list[str]:
    """Bullet ids found between the playbook markers (what an agent was shown), first seen first."""
    ids: list[str] = []
    for t in texts:
        for block in _MARKED.findall(t or ""):
            ids += [i for i in ID_RE.findall(block) if i not in ids]
    return ids
