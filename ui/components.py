"""Streamlit pieces shared by the pages (UI only; all data comes from core)."""

import base64
import html
import re
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import plotly.graph_objects as go
import streamlit as st

from core import jobs, views
from core.config import get_settings

STATUS_ICON = {"queued": "⏳", "running": "🏃", "succeeded": "✅", "failed": "❌", "error": "⚠️",
               "cancelled": "🚫", "pending": "📝", "applied": "✅", "partially_applied": "🟡", "rejected": "🚫"}
KIND_ICON = {"route": "🧭", "generate": "🤖", "execute": "▶️", "evaluate": "🧪", "reflect": "🔍", "curate": "🗂️",
             "apply": "📌", "error": "⚠️", "output": "📤", "review": "👀", "optimize": "🛠️"}


@contextmanager
def friendly_errors(what: str) -> Iterator[None]:
    """Errors as a message; details (type and message, no stack trace) in an expander."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the page must keep working
        st.error(f"Could not {what}: {exc}")
        with st.expander("Details"):
            st.code(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exception_only(exc)[-1]}", language="text")


@st.cache_data(ttl=300, show_spinner=False)
def isolation_label(backend: str) -> str:
    from core.sandbox import get_sandbox

    try:
        with get_sandbox(backend) as sb:
            return sb.isolation
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {exc}"


@st.cache_data(ttl=300, show_spinner=False)
def retrieval_label() -> str:
    from core.embeddings import embedder_status
    from core.retrieval import RankWeights

    weights = ", ".join(f"{k} {v:g}" for k, v in RankWeights.from_settings().as_dict().items())
    return f"{embedder_status()}  \nweights: {weights}"


def sidebar_status() -> None:
    s = get_settings()
    with st.sidebar:
        st.caption("Status")
        if s.llm_configured:
            st.markdown(f"**Model** `{s.model}`  \n{s.openai_base_url or 'OpenAI'}")
        else:
            st.markdown("**Model** not configured")
        st.markdown(f"**Sandbox** `{s.sandbox_backend}`  \n{isolation_label(s.sandbox_backend)}")
        st.markdown(f"**Review** `{s.review_mode}`")
        st.markdown(f"**Retrieval** {retrieval_label()}")
        n = views.count_pending()
        if n:
            st.page_link("pages/playbook.py", label=f"{n} delta(s) waiting for review", icon="📝")


def llm_missing_message() -> str:
    return ("No language model is configured, so LLM episodes cannot run. Set `OPENAI_API_KEY` (OpenAI), or "
            "`OPENAI_BASE_URL` for a local OpenAI-compatible server (Ollama, vLLM, ...) with any key, and "
            "`ACE_MODEL`, in the environment or `.env`, then restart. \"Run this code\" works without a model.")


def highlight_bullets(text: str, ids: set[str]) -> str:
    """HTML of a prompt with the embedded playbook bullets marked (used ones stronger)."""
    out = []
    for line in text.splitlines():
        esc = html.escape(line)
        m = re.match(r"\[([A-Za-z0-9_.-]+)\] helpful=", line)
        if m:
            color = "#ffe08a" if m.group(1) in ids else "#fff4cc"
            esc = f'<span style="background:{color}">{esc}</span>'
        elif line.startswith("**PLAYBOOK_"):
            esc = f"<b>{esc}</b>"
        out.append(esc)
    return ('<pre style="white-space:pre-wrap;font-size:0.85rem;max-height:420px;overflow:auto">'
            + "\n".join(out) + "</pre>")


def timeline(evs: list[Any]) -> Optional[go.Figure]:
    rows = [e for e in evs if e.duration_ms and e.kind != "output"]
    if not rows:
        return None
    fig = go.Figure()
    for e in rows:
        start = e.started_at
        fig.add_trace(go.Bar(x=[e.duration_ms], y=[f"{e.seq}. {e.kind}" + (f" #{e.attempt}" if e.attempt else "")],
                             base=[(start - rows[0].started_at).total_seconds() * 1000], orientation="h",
                             name=e.kind, showlegend=False, hovertemplate=f"{e.kind}: %{{x:.0f}} ms<extra></extra>"))
    fig.update_layout(height=60 + 28 * len(rows), margin=dict(l=10, r=10, t=10, b=30), xaxis_title="ms from start",
                      yaxis=dict(autorange="reversed"))
    return fig


def render_event(e: Any) -> None:
    p = e.payload or {}
    label = f"{KIND_ICON.get(e.kind, '•')} {e.kind}" + (f" (attempt {e.attempt})" if e.attempt else "")
    if e.duration_ms is not None:
        label += f" · {e.duration_ms:.0f} ms"
    if e.kind == "route":
        st.markdown(f"{label}: {p.get('reason', '')}; review **{p.get('review_mode', '-')}**, "
                    f"sandbox **{p.get('backend', '-')}**")
        return
    if e.kind == "error":
        st.error(f"{label}: {p.get('message')}")
        return
    if e.kind == "evaluate":
        box = st.success if p.get("passed") else st.warning
        box(f"{label}: {'PASSED' if p.get('passed') else 'FAILED'} "
            f"{p.get('total', 0) - len(p.get('failed') or [])}/{p.get('total', 0)} checks")
        for f in (p.get("failed") or [])[:20]:
            st.markdown(f"- `{f}`")
        return
    with st.expander(label, expanded=e.kind in ("execute",)):
        if e.kind in ("generate", "review", "optimize"):
            used = set(p.get("bullet_ids") or [])
            c1, c2 = st.columns(2)
            c1.metric("prompt tokens", p.get("prompt_tokens", 0))
            c2.metric("completion tokens", p.get("completion_tokens", 0))
            if p.get("retrieved"):
                st.caption("Retrieved bullets and why (scores)")
                st.dataframe([{"id": r["id"], "used": r["id"] in used, "score": r["score"], **r.get("scores", {})}
                              for r in p["retrieved"]], hide_index=True, width="stretch")
            for m in p.get("messages") or []:
                st.caption(m.get("role", ""))
                st.html(highlight_bullets(str(m.get("content", "")), used))
            if p.get("reasoning"):
                st.markdown(f"**Reasoning** {p['reasoning']}")
            if p.get("code"):
                st.code(p["code"], language="python")
        elif e.kind == "execute":
            ex = p.get("execution") or {}
            st.code(p.get("code", ""), language=p.get("language", "python"))
            st.caption(f"isolation: {p.get('isolation', '?')} · exit {ex.get('exit_code')}"
                       + (" · TIMED OUT" if ex.get("timed_out") else "") + (" · output truncated" if ex.get("truncated") else ""))
            out, err = "".join(ex.get("logs", {}).get("stdout", [])), "".join(ex.get("logs", {}).get("stderr", []))
            if out:
                st.text("stdout")
                st.code(out[-20000:], language="text")
            if err:
                st.text("stderr")
                st.code(err[-20000:], language="text")
            for r in ex.get("results") or []:
                if r.get("png"):
                    st.image(base64.b64decode(r["png"]))
            if ex.get("error"):
                er = ex["error"]
                st.error(f"{er.get('name')}: {er.get('value')}")
                if er.get("traceback"):
                    st.code(er["traceback"], language="text")
        elif e.kind == "reflect":
            r = p.get("reflection") or {}
            for k in ("error_identification", "root_cause_analysis", "correct_approach", "key_insight"):
                if r.get(k):
                    st.markdown(f"**{k.replace('_', ' ').capitalize()}**: {r[k]}")
        elif e.kind == "curate":
            for op in (p.get("curation") or {}).get("operations") or []:
                st.markdown(f"- **{op['type']}** {op.get('bullet_id') or ''} {op.get('content') or ''}")
        elif e.kind == "apply":
            st.json(p)
        else:
            st.json(p)


def render_trace(episode_id: str) -> None:
    ep = views.get_episode(episode_id)
    if ep is None:
        st.info(f"No episode {episode_id}.")
        return
    st.markdown(f"#### {STATUS_ICON.get(ep.status, '')} {ep.status} · `{ep.id}`")
    st.markdown(f"**Task** {ep.task}")
    c = st.columns(5)
    c[0].metric("playbook", ep.playbook_id)
    c[1].metric("attempts", f"{ep.attempts}/{ep.max_iterations}")
    c[2].metric("tokens", ep.tokens)
    c[3].metric("LLM time", f"{ep.llm_ms / 1000:.1f} s")
    c[4].metric("sandbox time", f"{ep.sandbox_ms / 1000:.1f} s")
    if ep.status in ("queued", "running") and ep.job_id:
        if st.button("Cancel this episode", key=f"cancel-{ep.id}"):
            jobs.cancel(ep.job_id)
            st.toast("Cancellation requested")
    if ep.error:
        st.error(ep.error)
    evs = views.events(ep.id)
    fig = timeline(evs)
    if fig is not None:
        with st.expander("Timeline"):
            st.plotly_chart(fig, width="stretch", key=f"timeline-{ep.id}-{len(evs)}")
    live_output: dict[int, list[str]] = {}
    executed = {e.attempt for e in evs if e.kind == "execute"}
    for e in evs:
        if e.kind == "output":
            if e.attempt not in executed:
                live_output.setdefault(e.attempt or 0, []).append(e.payload.get("text", ""))
            continue
        render_event(e)
    for attempt, chunks in live_output.items():
        st.caption(f"live output, attempt {attempt}")
        st.code("".join(chunks)[-20000:], language="text")
    if ep.delta_id:
        st.page_link("pages/playbook.py", label=f"Review delta {ep.delta_id}", icon="📝",
                     query_params={"playbook": ep.playbook_id, "delta": ep.delta_id})
    if views.reflection_for(ep.id):
        st.page_link("pages/reflection.py", label="Open the reflection", icon="🔍", query_params={"episode": ep.id})


def live_trace(episode_id: str) -> None:
    """Refresh every second while the episode runs, then stop refreshing."""
    ep = views.get_episode(episode_id)
    running = ep is not None and ep.status in ("queued", "running")

    @st.fragment(run_every=1.0 if running else None)
    def _view() -> None:
        render_trace(episode_id)
        now = views.get_episode(episode_id)
        if running and now is not None and now.status not in ("queued", "running"):
            st.rerun()

    _view()


def query_param(name: str) -> Optional[str]:
    v = st.query_params.get(name)
    return v if v else None


def call(fn: Callable[..., Any], *args: Any, success: str = "", **kwargs: Any) -> Any:
    """Run a core action; show its error as a message instead of a stack trace."""
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        st.error(str(exc))
        return None
    if success:
        st.toast(success)
    return out
