"""Scripted role replies for the fake LLM server, in the shapes the roles ask for."""

from typing import Any, Optional


def gen(code: str, bullet_ids: Optional[list[str]] = None, language: str = "python") -> dict[str, Any]:
    return {"reasoning": "scripted", "bullet_ids": bullet_ids or [], "code": code, "language": language}


def refl(insight: str = "check edge cases", tags: Optional[list[tuple[str, str]]] = None) -> dict[str, Any]:
    return {"reasoning": "scripted reflection", "error_identification": "the run failed" if tags is None else "",
            "root_cause_analysis": "scripted cause", "correct_approach": "scripted approach",
            "key_insight": insight, "bullet_tags": [{"id": i, "tag": t} for i, t in (tags or [])]}


def cur(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"reasoning": "scripted curation", "operations": list(ops)}


def add(content: str, section: str = "pitfalls") -> dict[str, Any]:
    return {"type": "ADD", "section": section, "content": content, "justification": "seen in a run",
            "evidence": "execution output"}
