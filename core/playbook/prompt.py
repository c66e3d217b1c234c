"""The playbook as a prompt sees it: the top-k bullets for a task, rendered between the markers."""

from collections.abc import Sequence
from typing import Optional

from core.config import get_settings
from core.playbook.lines import BEGIN_MARK, END_MARK, bullet_line, format_line
from core.playbook.store import get_or_create_playbook
from core.retrieval import RankWeights, Retrieved, search
from core.storage.models import Bullet, Playbook
from core.tokens import estimate_tokens


def render(playbook: Optional[Playbook], bullets: Sequence[Bullet], token_budget: Optional[int] = None) -> str:
    """The ACE prompt form, by section, between the markers.

    Bullets come in priority order; with a budget, the ones that do not fit are
    left out rather than truncated mid-strategy.
    """
    used = estimate_tokens(f"{BEGIN_MARK}\n{END_MARK}")
    sections: dict[str, list[str]] = {}
    for b in bullets:
        d = getattr(b, "__dict__", None) or {}
        try:  # loaded values straight from the instance: 4x faster than the ORM's descriptors, same values
            status, section = d["status"], d["section"]
            line = format_line(d["id"], d["helpful"], d["harmful"], d["content"])  # bullet_line(b), from loaded values
        except KeyError:  # an expired or unloaded attribute: let the ORM load it
            status = b.status
            section, line = (b.section, bullet_line(b)) if status == "active" else ("", "")
        if status != "active":
            continue
        cost = estimate_tokens(line) + 1
        if token_budget is not None and used + cost > token_budget:
            continue
        sections.setdefault(section, []).append(line)
        used += cost
    lines = [BEGIN_MARK]
    for section, items in sections.items():
        lines.append(f"## {section}")
        lines.extend(items)
    lines.append(END_MARK)
    return "\n".join(lines)


def retrieve(playbook_id: str, query: str, k: Optional[int] = None,
             weights: Optional[RankWeights] = None, expand: Optional[bool] = None) -> list[Retrieved]:
    """Top-k active bullets for a query: semantic, BM25, counters and provenance fused.

    Weights default to the ACE_RANK_WEIGHTS setting; query expansion (an LLM's
    likely pitfalls added to the task) to ACE_QUERY_EXPANSION. Without an
    embedder this is BM25 with the counters. When fewer than k bullets match,
    the best-rated others fill the list, so a new task still sees the
    playbook's proven strategies. Each result carries its per-signal scores.
    """
    settings = get_settings()
    k = settings.default_k if k is None else k
    w = weights if weights is not None else RankWeights.from_settings(settings)
    do_expand = (settings.query_expansion and settings.llm_configured) if expand is None else expand
    return search(playbook_id, query, k, w, expand=do_expand)


def embed_prompt(playbook_id: str, prompt: str, k: Optional[int] = None,
                 token_budget: Optional[int] = None) -> str:
    """The prompt followed by the top-k bullets between the markers."""
    hits = retrieve(playbook_id, prompt, k)
    pb = None
    if not hits:  # an empty or unknown playbook: the first use creates it (and validates the id)
        pb = get_or_create_playbook(playbook_id)
    budget = get_settings().prompt_token_budget if token_budget is None else token_budget
    return f"{prompt}\n\n{render(pb, [h.bullet for h in hits], budget)}"
