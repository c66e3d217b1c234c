"""What an episode learned, or why it learned nothing: skipped learning, dropped ops, invented bullet ids and
unusable replies. Reasons, ops and replies come from models, so all of it is shown as text."""

from collections.abc import Sequence
from typing import Any

import streamlit as st

from core import views
from core.views import DroppedOp, LearningOutcome, UnusableReply
from ui import safe


def skipped(reason: str) -> None:
    with st.container(border=True):
        st.text(f"⏭️ Learning skipped: {reason}")


def dropped(ops: list[DroppedOp]) -> None:
    if not ops:
        return
    st.text(f"{len(ops)} proposed op(s) dropped" if len(ops) != 1 else "1 proposed op dropped")
    st.text("\n".join(f"✗ {d.text}\n    reason: {d.reason or '(none given)'}" for d in ops))


def invented(n: int, listed: Sequence[str] = ()) -> None:
    if n:
        st.text((f"{n} invented bullet ids ignored" if n != 1 else "1 invented bullet id ignored")
                + (f": {', '.join(listed)}" + (", ..." if len(listed) < n else "") if listed else ""))


def unusable(u: UnusableReply) -> None:
    st.text(f"reply unusable: {u.error}")
    if u.response is None:
        st.text("raw reply: (none, the call got no reply)")
    elif not u.response:
        st.text("raw reply: (empty)")
    else:
        st.text("raw reply")
        safe.code(u.response)


def step_notes(kind: str, payload: dict[str, Any]) -> None:
    """What a model step dropped or ignored (fields older episodes lack)."""
    invented(views.invented_count(payload), views.invented_listed(payload))
    if kind == "curate":
        dropped(views.dropped_ops(payload.get("dropped")))


def summary(outcome: LearningOutcome) -> None:
    """The learning outcome of an episode in a few lines (the reflection page)."""
    if outcome.skipped:
        skipped(outcome.skipped)
    elif outcome.status == "pending" and outcome.delta_id:
        st.text(f"The Curator's delta {outcome.delta_id} waits for review.")
    elif outcome.status == "applied":
        st.text("The Curator's delta was applied" + (f" (delta {outcome.delta_id})." if outcome.delta_id else "."))
    elif outcome.status == "empty":
        st.text("The Curator proposed no change.")
    for kind, n in outcome.invented.items():
        st.text(f"{kind}: {n} invented bullet id(s) ignored")
    dropped(outcome.dropped)
    for u in outcome.unusable:
        st.text(f"{u.kind}" + (f", attempt {u.attempt}" if u.attempt else "") + f": reply unusable: {u.error}")
    if outcome.unusable:
        safe.caption("The raw replies are in the trace.")
