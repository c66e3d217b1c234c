"""Playbooks: bullets, delta operations, versions, import and export.

`from core import playbook` gives the API other code and the README use; the modules
inside hold the parts.
"""

from core.playbook.deltas import (BEGIN_MARK, END_MARK, PLAYBOOK_ID_RE, ApplyResult, Decision, active_bullets,
                                  apply_delta, auto_apply, bullet_line, count_bullets, decide_ops, embed_prompt,
                                  get_bullet, get_or_create_playbook, get_playbook, list_playbooks, propose_delta,
                                  render, retrieve, similarity, submit_delta, validate_playbook_id)
from core.playbook.ops import DeltaError, DeltaIn, OpIn

__all__ = [
    "BEGIN_MARK", "END_MARK", "PLAYBOOK_ID_RE", "ApplyResult", "Decision", "DeltaError", "DeltaIn", "OpIn",
    "active_bullets", "apply_delta", "auto_apply", "bullet_line", "count_bullets", "decide_ops", "embed_prompt",
    "get_bullet", "get_or_create_playbook", "get_playbook", "list_playbooks", "propose_delta", "render", "retrieve",
    "similarity", "submit_delta", "validate_playbook_id",
]
