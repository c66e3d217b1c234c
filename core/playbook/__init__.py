"""Playbooks: bullets, delta operations, versions, import and export.

`from core import playbook` gives the API other code and the README use; the
modules inside hold the parts: `store` (playbooks and bullets), `lines` (the
bullet line codec), `ops` (operations and their checks), `dedup`, `applier`
(ops to rows, one version per delta), `deltas` (store, decide, apply),
`prompt` (retrieve and render for a prompt), `versions`, `portability`
(import and export) and `routing` (a task's environment).
"""

from core.playbook.applier import ApplyResult, OpResult
from core.playbook.dedup import similarity
from core.playbook.deltas import Decision, apply_delta, auto_apply, decide_ops, propose_delta, submit_delta
from core.playbook.lines import BEGIN_MARK, END_MARK, bullet_line
from core.playbook.ops import DeltaError, DeltaIn, OpIn
from core.playbook.prompt import embed_prompt, render, retrieve
from core.playbook.store import (
    PLAYBOOK_ID_RE,
    active_bullets,
    count_bullets,
    ensure_playbook,
    get_bullet,
    get_or_create_playbook,
    get_playbook,
    list_playbooks,
    lock_playbook,
    validate_playbook_id,
)
from core.retrieval import RankWeights, Retrieved  # what retrieve() takes and returns

__all__ = [
    "BEGIN_MARK", "END_MARK", "PLAYBOOK_ID_RE", "ApplyResult", "Decision", "DeltaError", "DeltaIn", "OpIn", "OpResult",
    "RankWeights", "Retrieved",
    "active_bullets", "apply_delta", "auto_apply", "bullet_line", "count_bullets", "decide_ops", "embed_prompt",
    "ensure_playbook", "get_bullet", "get_or_create_playbook", "get_playbook", "list_playbooks", "lock_playbook",
    "propose_delta", "render", "retrieve", "similarity", "submit_delta", "validate_playbook_id",
]
