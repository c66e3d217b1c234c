"""Task submission: describe a task, give tests, run it, and watch the trace."""

import streamlit as st
from pydantic import ValidationError
from streamlit_ace import st_ace

from core import loop, views, worker
from core.config import get_settings
from core.episodes import samples
from ui import safe
from ui.components import friendly_errors, live_trace, llm_missing_message, query_param

AUTO = "(automatic routing)"
settings = get_settings()

safe.title("🧪 Playground")

SAMPLES = samples.load_samples()
defaults = {"task": "", "language": "python", "tests_code": "", "expected": "", "code_editor": ""}
for k, v in defaults.items():
    st.session_state.setdefault(k, v)


def load_sample(i: int) -> None:
    s = SAMPLES[i]
    st.session_state.task = s["task"]
    st.session_state.language = s.get("language", "python")
    st.session_state.tests_code = s.get("tests", "")
    st.session_state.expected = s.get("expected_output", "")
    st.session_state.code_editor = s.get("code", "")
    st.session_state.ace_gen = st.session_state.get("ace_gen", 0) + 1  # remount the editors with the new text


if SAMPLES:
    with st.expander("Sample tasks", expanded=not st.session_state.task):
        cols = st.columns(min(4, len(SAMPLES)))
        for i, s in enumerate(SAMPLES):
            cols[i % len(cols)].button(safe.label(s["name"]), key=f"sample-{i}", on_click=load_sample, args=(i,),
                                       width="stretch")

mode = st.radio("Mode", ["LLM episode", "Run this code (no LLM)"], horizontal=True, key="mode",
                index=0 if settings.llm_configured else 1,
                help="An LLM episode generates, runs, reflects and learns. 'Run this code' sends your code "
                     "straight to the sandbox.")
sandbox_only = mode != "LLM episode"
if not sandbox_only and not settings.llm_configured:
    safe.warning(llm_missing_message())

st.text_area("Task", key="task", height=100, placeholder="Write a function mean(xs) that ...")
c1, c2, c3, c4 = st.columns(4)
language = c1.selectbox("Language", ["python", "javascript", "bash"], key="language")
pb_choices = [AUTO] + views.playbook_ids()
pb_pick = c2.selectbox("Playbook", pb_choices + ["(new playbook...)"], key="pb_pick")
new_pb = c2.text_input("New playbook id", key="pb_new") if pb_pick == "(new playbook...)" else ""
max_iter = c3.number_input("Max iterations", 1, 10, settings.max_iterations, key="max_iter",
                           disabled=sandbox_only)
review = c4.radio("Review", ["auto", "manual"], index=0 if settings.review_mode == "auto" else 1, key="review",
                  horizontal=True, disabled=sandbox_only)
workflow = c4.toggle("Reviewer + optimizer", key="workflow", disabled=sandbox_only,
                     help="A reviewer reads the code and its real run; an optimizer rewrites it when needed. "
                          "Each role learns into its own playbook.")
safe.caption(f"Model {settings.model if settings.llm_configured else 'not configured'} · sandbox "
             f"{settings.sandbox_backend}")

gen = st.session_state.get("ace_gen", 0)
ace_lang = {"python": "python", "javascript": "javascript", "bash": "sh"}[language]
if sandbox_only:
    safe.markdown(safe.md("**Code**"))
    code = st_ace(value=st.session_state.code_editor, language=ace_lang, key=f"code_ace_{gen}", height=220,
                  auto_update=True, min_lines=8)
else:
    code = ""
t1, t2 = st.columns(2)
with t1:
    safe.markdown(safe.md("**Tests** (assert statements run after the code)"))
    tests = st_ace(value=st.session_state.tests_code, language=ace_lang, key=f"tests_ace_{gen}", height=160,
                   auto_update=True, min_lines=6)
with t2:
    expected = st.text_area("Expected output (stdout)", key="expected", height=160)

run = st.button("▶ Run", type="primary", disabled=not sandbox_only and not settings.llm_configured)
if run:
    with friendly_errors("start the episode"):
        playbook_id = None if pb_pick == AUTO else (new_pb.strip() if pb_pick == "(new playbook...)" else pb_pick)
        try:
            spec = loop.TaskSpec(task=st.session_state.task.strip() or "(untitled)", language=language,
                                 tests=tests or None, expected_output=expected or None,
                                 playbook_id=playbook_id or None, max_iterations=int(max_iter),
                                 review_mode=review, mode="sandbox_only" if sandbox_only else "llm",
                                 code=code if sandbox_only else None, workflow="review" if workflow else "single")
        except ValidationError as exc:
            err = exc.errors()[0]
            safe.error(f"{err['loc'][0]}: {err['msg']}")
            st.stop()
        if sandbox_only and not (code or "").strip():
            safe.error("Write some code to run first.")
            st.stop()
        new_episode_id, _ = loop.submit_episode(spec)
        if settings.worker_in_app:
            worker.start_in_background()
        st.query_params["episode"] = new_episode_id

episode_id = query_param("episode")
if episode_id:
    st.divider()
    st.page_link("app_pages/trace.py", label="Open in the trace viewer", icon="🔎",
                 query_params={"episode": episode_id})
    with friendly_errors("show the trace"):
        live_trace(episode_id)
