"""Reflection output: what the Reflector concluded from a real execution, and what the episode learned (or why
not). Everything a model wrote is shown as text, never as markdown."""

import streamlit as st

from core import views
from ui import outcome, safe
from ui.components import friendly_errors, query_param

safe.title("🔍 Reflections")

with friendly_errors("load reflections"):
    recent = views.recent_reflections()
    episode_id = query_param("episode")
    if not recent and not episode_id:
        safe.info("No reflections yet. They appear after an LLM episode (or an agent's episodes/learn call).")
        st.stop()
    options = [r.episode_id for r, _ in recent]
    labels = {r.episode_id: f"{r.created_at:%m-%d %H:%M} · {r.playbook_id} · {task[:70]}" for r, task in recent}
    if episode_id and episode_id not in options:
        options.insert(0, episode_id)
        labels[episode_id] = episode_id
    pick = st.selectbox("Episode", options, index=options.index(episode_id) if episode_id in options else 0,
                        format_func=lambda x: labels.get(x, x))
    if pick != episode_id:
        st.query_params["episode"] = pick
    refl = views.reflection_for(pick)
    ep = views.get_episode(pick)
    if ep is None:
        safe.warning(f"There is no episode {pick!r}.")
        st.stop()
    safe.markdown(safe.md_format("**Task** {}", ep.task))
    safe.caption(f"episode {ep.id} · {ep.status} · playbook {ep.playbook_id}")
    l1, l2 = st.columns(2)
    l1.page_link("app_pages/trace.py", label="Open the trace", icon="🔎", query_params={"episode": ep.id})
    delta = views.delta_with_ops(ep.delta_id) if ep.delta_id else None
    if delta is not None:  # what this reflection led to: the Curator's delta, as applied or waiting for review
        l2.page_link("app_pages/playbook.py", icon="📝",
                     label=safe.label(f"The delta it produced ({delta.delta.status.replace('_', ' ')}, "
                                      f"{len(delta.ops)} op(s))"),
                     query_params={"playbook": ep.playbook_id, "delta": delta.delta.id})
    learned = views.learning_outcome(pick)
    if refl is None:
        safe.info("This episode has no reflection (yet).")
        if not learned.empty:
            safe.subheader("Learning outcome")
            outcome.summary(learned)
        st.stop()
    fields = [("Error identification", refl.error_identification), ("Root cause analysis", refl.root_cause_analysis),
              ("Correct approach", refl.correct_approach), ("Key insight", refl.key_insight)]
    for row in (fields[:2], fields[2:]):
        cols = st.columns(2)
        for col, (title, text) in zip(cols, row):
            with col.container(border=True):
                safe.subheader(title)
                st.text(text or "—")
    if refl.reasoning:
        with st.expander("The Reflector's reasoning"):
            st.text(refl.reasoning)
    safe.subheader("Bullets tagged")
    if not refl.bullet_tags:
        safe.caption("The Reflector tagged no bullets (the generator used none, or none applied).")
    icons = {"helpful": "👍", "harmful": "👎", "neutral": "➖"}
    texts = views.current_texts(refl.playbook_id, [str(t.get("id")) for t in refl.bullet_tags])
    for t in refl.bullet_tags:
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        bid, tag = str(t.get("id")), str(t.get("tag"))
        c1.text(f"{icons.get(tag, '')} {tag} [{bid}] {texts.get(bid, '(no such bullet)')}")
        c2.page_link("app_pages/playbook.py", label="in the playbook", icon="📒",
                     query_params={"playbook": refl.playbook_id, "bullet": bid})
    if not learned.empty:
        safe.subheader("Learning outcome")
        outcome.summary(learned)
