"""Task submission: describe a task, give tests, run it, and watch the trace."""

import streamlit as st
from pydantic import ValidationError
from streamlit_ace import st_ace

from core import loop, views, worker
from core.config import get_settings
from core.episodes import samples
from core.errors import Missing
from ui import safe
from ui.components import friendly_errors, live_trace, llm_missing_message, query_param

AUTO = "(automatic routing)"
settings = get_settings()

safe.title("🧪 Playground")

SAMPLES = samples.load_samples()
LLM_MODE, CODE_MODE = "LLM episode", "Run this code (no LLM)"
defaults = {"task": "", "language": "python", "tests_code": "", "expected": "", "code_editor": "",
            "mode": LLM_MODE if settings.llm_configured else CODE_MODE, "max_iter": settings.max_iterations,
            "review": settings.review_mode, "workflow": False}
for k, v in defaults.items():
    st.session_state.setdefault(k, v)


def prefill_rerun(episode_id: str) -> bool:
    """Fill the form with what the episode was asked (once per episode); False when it does not exist."""
    if st.session_state.get("prefilled_from") == episode_id:
        return True
    try:
        spec = loop.rerun_spec(episode_id)
    except Missing:
        return False
    st.session_state.update(task=spec.task, language=spec.language, tests_code=spec.tests or "",
                            expected=spec.expected_output or "", code_editor=spec.code or "",
                            mode=CODE_MODE if spec.mode == "sandbox_only" else LLM_MODE,
                            max_iter=spec.max_iterations or settings.max_iterations,
                            review=spec.review_mode or settings.review_mode, workflow=spec.workflow == "review",
                            pb_pick=spec.playbook_id, prefilled_from=episode_id)
    st.session_state.ace_gen = st.session_state.get("ace_gen", 0) + 1  # remount the editors with the new text
    return True


rerun_of = query_param("rerun")
if rerun_of and not prefill_rerun(rerun_of):
    safe.warning(f"There is no episode {rerun_of!r} to re-run.")
    rerun_of = None
if rerun_of:
    r1, r2 = st.columns([3, 1], vertical_alignment="center")
    with r1:
        safe.info(f"Re-running episode {rerun_of} with edits: change anything below and run. The new episode "
                  "links back to it.")
    r2.page_link("app_pages/trace.py", label="The original episode", icon="🔎", query_params={"episode": rerun_of})


def load_sample(i: int) -> None:
    s = SAMPLES[i]
    st.session_state.task = s["task"]
    st.session_state.language = s.get("language", "python")
    st.session_state.tests_code = s.get("tests", "")
    st.session_state.expected = s.get("expected_output", "")
    st.session_state.code_editor = s.get("code", "")
    st.session_state.ace_gen = st.session_state.get("ace_gen", 0) + 1  # remount the editors with the new text


LOOP = """digraph {
  rankdir=LR; bgcolor="transparent"; node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="sans"];
  task [label="a task"]; generate [label="generate\nthe model writes code,\nreading the playbook"];
  run [label="run\nin an isolated sandbox"]; reflect [label="reflect\non what really happened"];
  curate [label="curate\nchanges to the playbook"]; review [label="review\n(you approve or reject)"];
  playbook [label="playbook\nstrategies that worked", shape=cylinder, fillcolor="#fff9db"];
  task -> generate -> run -> reflect -> curate -> review -> playbook; playbook -> generate [style=dashed];
}"""


def first_visit() -> None:
    """An empty database: say what ACE does, show the loop, and offer a first run that explains itself."""
    with st.container(border=True):
        safe.subheader("Welcome: an agent that learns from running its own code")
        safe.markdown(safe.md(
            "You give it a task. A model writes code, using the strategies in a **playbook**. The code really "
            "runs, isolated in a sandbox. A reflector reads what happened (the output, the errors, the tests), "
            "and a curator turns that into changes to the playbook, which you can review. The next task starts "
            "from a better playbook: that is the learning you can watch here."))
        st.graphviz_chart(LOOP)
        if settings.llm_configured:
            label = "▶ Try it: let the model solve a sample task"
            how = "It runs the whole loop on a small task with a tricky edge case, then opens its trace."
        else:
            label = "▶ Try it: run a sample program (no model needed)"
            how = ("No model is configured, so this runs a sample's own code, which has a bug its tests catch, "
                   "and shows the playbook strategy that would have told a model how to avoid it.")
        safe.caption(how)
        if st.button(safe.label(label), key="first_run", type="primary"):
            with friendly_errors("start the first run"):
                new_id = samples.first_run(with_model=settings.llm_configured)
                if settings.worker_in_app:
                    worker.start_in_background()
                st.query_params["episode"] = new_id
                st.rerun()


if views.episodes_frame(limit=1).empty and not query_param("episode") and not query_param("rerun"):
    first_visit()
shown_ep = views.get_episode(query_param("episode") or "")
if shown_ep is not None and shown_ep.playbook_id == samples.STARTER_PLAYBOOK and shown_ep.mode == "sandbox_only":
    with st.container(border=True):  # a first run without a model: what a model would have read
        safe.markdown(safe.md_format("**The playbook a model would have read**, {}:", samples.STARTER_PLAYBOOK))
        for b in views.playbook_bullets(samples.STARTER_PLAYBOOK):
            st.text(b)
        safe.caption("Configure a model (see the sidebar's status) and the loop writes, runs and learns by itself.")

if SAMPLES:
    with st.expander("Sample tasks", expanded=not st.session_state.task):
        cols = st.columns(min(4, len(SAMPLES)))
        for i, s in enumerate(SAMPLES):
            cols[i % len(cols)].button(safe.label(s["name"]), key=f"sample-{i}", on_click=load_sample, args=(i,),
                                       width="stretch")

mode = st.radio("Mode", [LLM_MODE, CODE_MODE], horizontal=True, key="mode", format_func=safe.label,
                help="An LLM episode generates, runs, reflects and learns. 'Run this code' sends your code "
                     "straight to the sandbox.")
sandbox_only = mode != LLM_MODE
if not sandbox_only and not settings.llm_configured:
    safe.warning(llm_missing_message())

st.text_area("Task", key="task", height=100, placeholder="Write a function mean(xs) that ...")
c1, c2, c3, c4 = st.columns(4)
language = c1.selectbox("Language", ["python", "javascript", "bash"], key="language")
pb_choices = [AUTO] + views.playbook_ids()
if st.session_state.get("pb_pick") not in (None, *pb_choices, "(new playbook...)"):
    pb_choices.append(st.session_state["pb_pick"])  # a re-run's playbook, even a benchmark's
pb_pick = c2.selectbox("Playbook", pb_choices + ["(new playbook...)"], key="pb_pick")
new_pb = c2.text_input("New playbook id", key="pb_new") if pb_pick == "(new playbook...)" else ""
max_iter = c3.number_input("Max iterations", 1, 10, key="max_iter", disabled=sandbox_only)
review = c4.radio("Review", ["auto", "manual"], key="review", horizontal=True, disabled=sandbox_only)
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
                                 code=code if sandbox_only else None, workflow="review" if workflow else "single",
                                 rerun_of=rerun_of)
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
        st.query_params.pop("rerun", None)
        st.query_params["episode"] = new_episode_id

episode_id = query_param("episode")
if episode_id:
    st.divider()
    st.page_link("app_pages/trace.py", label="Open in the trace viewer", icon="🔎",
                 query_params={"episode": episode_id})
    with friendly_errors("show the trace"):
        live_trace(episode_id)
