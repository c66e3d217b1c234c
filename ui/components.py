"""Streamlit pieces shared by the pages (UI only; all data comes from core)."""

import base64
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional, cast

import plotly.graph_objects as go
import streamlit as st

from core import loop, views
from core.config import get_settings
from core.episodes.events import (
    ApplyPayload,
    CuratePayload,
    EvaluatePayload,
    ExecutePayload,
    GeneratePayload,
    ReflectPayload,
    RoutePayload,
)
from core.errors import plain_message
from core.playbook.lines import BEGIN_MARK, END_MARK, line_id
from core.storage.models import Event
from ui import outcome, safe
from ui.llm_calls import call_links, render_llm_calls

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
        safe.error(f"Could not {what}: {plain_message(exc)}")
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
def retrieval_label() -> tuple[str, str]:
    from core.retrieval import RankWeights
    from core.retrieval.embeddings import embedder_status

    weights = ", ".join(f"{k} {v:g}" for k, v in RankWeights.from_settings().as_dict().items())
    return embedder_status(), weights


def sidebar_status() -> None:
    """What a stakeholder needs first, in their words; the technical details (endpoint, isolation, ranking
    weights) one click away."""
    s = get_settings()
    with st.sidebar:
        safe.caption("Status")
        safe.markdown(safe.md_format("**Model**: {}", s.model) if s.llm_configured
                      else safe.md("**Model**: none yet. Runs of your own code still work."))
        safe.markdown(safe.md_format("**Code runs**: isolated in a sandbox {}",
                                     "in E2B's cloud" if s.sandbox_backend == "e2b" else "on this machine"))
        safe.markdown(safe.md_format("**What it learns**: {}", "applied at once, every change a new version"
                                     if s.review_mode == "auto" else "waits for your review"))
        n = views.count_pending()
        if n:
            st.page_link("app_pages/playbook.py", label=safe.label(f"{n} delta(s) waiting for review"), icon="📝")
        with st.expander("Technical details"):
            if s.llm_configured:
                safe.markdown(safe.md_format("**Model** {}  \n{}", s.model, s.openai_base_url or "OpenAI"))
            safe.markdown(safe.md_format("**Sandbox** {}  \n{}", s.sandbox_backend,
                                         isolation_label(s.sandbox_backend)))
            safe.markdown(safe.md_format("**Review** {}", s.review_mode))
            safe.markdown(safe.md_format("**Retrieval** {}  \nweights: {}", *retrieval_label()))


def llm_missing_message() -> safe.Md:
    return safe.md("No language model is configured, so LLM episodes cannot run. Set `OPENAI_API_KEY` (OpenAI), "
                   "or `OPENAI_BASE_URL` for a local OpenAI-compatible server (Ollama, vLLM, ...) with any key, and "
                   "`ACE_MODEL`, in the environment or `.env`, then restart. \"Run this code\" works without a "
                   "model.")


KIND_COLOR = {"route": "#868e96", "generate": "#4c6ef5", "review": "#7950f2", "optimize": "#be4bdb",
              "execute": "#f08c00", "reflect": "#12b886", "curate": "#20c997", "apply": "#2f9e44", "error": "#e03131"}
USED_STYLE = "background:#ffd43b;border-left:4px solid #e67700"
EMBEDDED_STYLE = "background:#e7f5ff;border-left:4px solid #74c0fc"


def output_box(text: str) -> None:
    """Program output in a box of bounded height: its head and tail when long, with what was cut marked."""
    shown = views.clip_output(text)
    st.code(shown, language="text", height=420 if shown.count("\n") > 20 else "content")


def fmt_ms(ms: Optional[float]) -> str:
    ms = ms or 0.0
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def highlight_legend() -> safe.Html:
    return safe.html('<div style="font-size:0.85rem;margin-bottom:4px">Playbook bullets in the prompt: '
                     '<span style="{};padding:1px 6px">used by the model</span> '
                     '<span style="{};padding:1px 6px">embedded, not used</span></div>', USED_STYLE, EMBEDDED_STYLE)


def highlight_bullets(text: str, ids: set[str]) -> safe.Html:
    """HTML of a prompt with the embedded playbook bullets marked (the ones the model used stronger)."""
    out = []
    inside = False
    for line in text.splitlines():
        bullet_id = line_id(line)
        if bullet_id is not None:
            style = USED_STYLE if bullet_id in ids else EMBEDDED_STYLE
            esc = safe.html('<span style="{};display:inline-block;width:100%;padding-left:4px">{}</span>', style, line)
        elif line.startswith((BEGIN_MARK, END_MARK)):
            inside = line.startswith(BEGIN_MARK)
            esc = safe.html('<b style="color:#1864ab">{}</b>', line)
        elif inside and line.startswith("#"):
            esc = safe.html("<b>{}</b>", line)
        else:
            esc = safe.html("{}", line)
        out.append(esc)
    return safe.html('<pre style="white-space:pre-wrap;font-size:0.85rem;max-height:420px;overflow:auto;'
                     'background:#f8f9fa;padding:8px;border-radius:4px">{}</pre>', safe.html("\n").join(out))


def _step_label(e: Any) -> str:
    role = (e.payload or {}).get("role")
    name = f"{role} {e.kind}" if role and role not in e.kind else e.kind
    return name + (f" · attempt {e.attempt}" if e.attempt else "")


def timeline(evs: list[Any]) -> Optional[go.Figure]:
    """One bar per timed step, on a shared clock, coloured by kind."""
    rows = [e for e in evs if e.duration_ms and e.kind != "output"]
    if not rows:
        return None

    def start(e: Any) -> Any:
        # an execute event is written when the run ends: its timestamp is the end, not the start
        return e.started_at - timedelta(milliseconds=e.duration_ms) if e.kind == "execute" else e.started_at

    t0 = min(start(e) for e in rows)
    fig = go.Figure()
    for e in rows:
        name = safe.plotly_text(_step_label(e))  # plotly renders <a href> and <b> in axis labels and hovers
        fig.add_trace(go.Bar(x=[e.duration_ms], y=[name], base=[(start(e) - t0).total_seconds() * 1000],
                             orientation="h", marker_color=KIND_COLOR.get(e.kind, "#adb5bd"), showlegend=False,
                             hovertext=[f"{name}: {fmt_ms(e.duration_ms)}"], hoverinfo="text"))
    fig.update_layout(height=70 + 30 * len(rows), margin=dict(l=10, r=10, t=10, b=40), xaxis_title="ms from start",
                      yaxis=dict(autorange="reversed", type="category"), font=dict(size=14))
    return fig


def _retrieved_rows(p: dict[str, Any], used: set[str]) -> list[dict[str, Any]]:
    rows = []
    for r in p["retrieved"]:
        sc = dict(r.get("scores") or {})
        filler = bool(sc.pop("fallback", 0))
        rows.append({"bullet": r["id"], "used": r["id"] in used, "score": None if filler else r["score"],
                     "why": "filler (no match)" if filler else "matched", **sc})
    return rows


def _label_notes(e: Event) -> safe.Md:
    """What the expander label says beside the step: an unusable reply, dropped ops, invented ids, call count."""
    p = e.payload or {}
    notes = safe.md("")
    if views.unusable_reply(e) is not None:
        notes += safe.md(" · ⚠️ reply unusable")
    if e.kind == "curate" and (n := len(views.dropped_ops(p.get("dropped")))):
        notes += safe.md_format(" · {} op(s) dropped", n)
    if n := views.invented_count(p):
        notes += safe.md_format(" · {} invented id(s) ignored", n)
    if n := len(views.call_ids_of(p)):
        notes += safe.md_format(" · {} model call(s)", n)
    return notes


def render_event(e: Event, language: str = "python", call_numbers: Optional[dict[int, int]] = None) -> None:
    """One trace event, read through its kind's payload type (`core.episodes.events`). Whatever a model wrote
    is shown as text (or escaped HTML), never as markdown."""
    p = e.payload or {}
    label = safe.md_format("{} {}", KIND_ICON.get(e.kind, "•"), _step_label(e))
    if e.duration_ms is not None:
        label += safe.md_format(" · {}", fmt_ms(e.duration_ms))
    label += _label_notes(e)
    if e.kind == "route":
        route = cast(RoutePayload, p)
        text = safe.md_format("{} route: {}", KIND_ICON["route"], route.get("reason", ""))
        if route.get("mode") == "sandbox_only":
            text += safe.md_format("; sandbox **{}**, no model (run this code)", route.get("backend", "-"))
        elif route.get("backend"):
            text += safe.md_format("; review **{}**, sandbox **{}**", route.get("review_mode", "-"),
                                   route.get("backend", "-"))
        safe.markdown(text)
        return
    if e.kind == "error":
        safe.error(label)
        safe.code(str(p.get("message") or ""))
        return
    if e.kind == "apply" and (reason := views.skipped_reason(p)) is not None:
        outcome.skipped(reason)
        return
    if e.kind == "evaluate":
        ev = cast(EvaluatePayload, p)
        box = safe.success if ev.get("passed") else safe.warning
        verdict = "PASSED" if ev.get("passed") else "FAILED"
        if ev.get("total", 0):
            box(label + safe.md_format(": {} {}/{} checks", verdict, ev.get("total", 0) - len(ev.get("failed") or []),
                                       ev.get("total", 0)))
        else:  # nothing to check against: the program's exit decided
            box(label + safe.md_format(": {} · no tests: judged by exit code", verdict))
        failed = (ev.get("failed") or [])[:20]
        if failed:
            st.text("\n".join(f"- {f}" for f in failed))
        return
    with st.expander(safe.label(label), expanded=e.kind in ("execute",)):
        if (bad := views.unusable_reply(e)) is not None:  # a model step whose reply could not be used
            outcome.unusable(bad)
        if e.kind in ("generate", "review", "optimize"):
            gen = cast(GeneratePayload, p)
            used = set(gen.get("bullet_ids") or [])
            st.text(f"prompt tokens {gen.get('prompt_tokens', 0):,} · completion tokens "
                    f"{gen.get('completion_tokens', 0):,} · bullets used "
                    + (", ".join(str(b) for b in sorted(used)) if used else "none"))
            outcome.step_notes(e.kind, p)
            if gen.get("retrieved"):
                safe.caption("Bullets retrieved into the prompt, with their ranking signals")
                st.dataframe(_retrieved_rows(p, used), hide_index=True, width="stretch",
                             column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                            for c in ("score", "semantic", "lexical", "counters", "provenance")})
            prompts = [str(m.get("content", "")) for m in gen.get("messages") or []]
            if any(line_id(line) for text in prompts for line in text.splitlines()):
                safe.show_html(highlight_legend())
            for m in gen.get("messages") or []:
                safe.caption(f"{m.get('role', '')} message")
                safe.show_html(highlight_bullets(str(m.get("content", "")), used))
            if gen.get("reasoning"):
                st.text(f"Reasoning: {gen['reasoning']}")
            if gen.get("code"):
                st.code(gen["code"], language=language)
        elif e.kind == "execute":
            run = cast(ExecutePayload, p)
            ex = run.get("execution") or {}
            st.code(run.get("code", ""), language=run.get("language", language))
            safe.caption(f"exit {ex.get('exit_code')}" + (" · TIMED OUT" if ex.get("timed_out") else "")
                       + (" · output truncated" if ex.get("truncated") else "")
                       + f" · isolation: {run.get('isolation', '?')}")
            out, err = "".join(ex.get("logs", {}).get("stdout", [])), "".join(ex.get("logs", {}).get("stderr", []))
            er = ex.get("error") or {}
            if er:
                safe.error("The code raised an exception")
                safe.code(f"{er.get('name')}: {er.get('value')}")
            if out:
                safe.markdown(safe.md("**stdout**"))
                output_box(out)
            if err:
                safe.markdown(safe.md("**stderr**"))
                output_box(err)
            if er.get("traceback") and er["traceback"].strip() not in err:
                safe.markdown(safe.md("**traceback**"))
                st.code(er["traceback"], language="text")
            for r in ex.get("results") or []:
                if r.get("png"):
                    st.image(base64.b64decode(r["png"]))
        elif e.kind == "reflect":
            refl = cast(ReflectPayload, p)
            r = refl.get("reflection") or {}
            for k in ("error_identification", "root_cause_analysis", "correct_approach", "key_insight"):
                if r.get(k):
                    st.text(f"{k.replace('_', ' ').capitalize()}: {r[k]}")
            tags = r.get("bullet_tags") or []
            if tags:
                st.text("Bullets tagged: " + ", ".join(f"{t.get('id')} {t.get('tag')}" for t in tags))
            outcome.step_notes(e.kind, p)
        elif e.kind == "curate":
            cur = cast(CuratePayload, p).get("curation") or {}
            ops = cur.get("operations") or []
            if cur.get("reasoning"):
                st.text(f"Reasoning: {cur['reasoning']}")
            st.text("\n".join(f"- {views.op_summary(op)}" for op in ops) if ops else "No operations proposed.")
            outcome.step_notes(e.kind, p)
        elif e.kind == "apply":
            ap = cast(ApplyPayload, p)
            results = ap.get("results") or []
            if ap.get("status") == "pending":
                safe.markdown(safe.md_format("{} op(s) wait for review in delta {}.", ap.get("operations", 0),
                                             ap.get("delta_id")))
            elif ap.get("version") is not None:
                safe.markdown(safe.md_format("Applied {} op(s) as version **{}** (delta {}): {}", len(results),
                                             ap["version"], ap.get("delta_id"),
                                             ", ".join(f"{r.get('type')} {r.get('bullet_id')}" for r in results)))
            for r in ap.get("rejected") or []:
                st.text(f"- not applied: {r}")
            st.json(p, expanded=False)
        else:
            st.json(p, expanded=False)
        call_links(e.episode_id, views.call_ids_of(p), call_numbers or {})


def render_trace(episode_id: str, focus_call: Optional[str] = None) -> None:
    ep = views.get_episode(episode_id)
    if ep is None:
        safe.info(f"No episode {episode_id}.")
        return
    sandbox_only = ep.mode == "sandbox_only"
    safe.heading(f"{STATUS_ICON.get(ep.status, '')} {ep.status} · {ep.id}")
    safe.markdown(safe.md_format("**Task** {}", ep.task))
    safe.caption(f"playbook {ep.playbook_id} · {ep.language} · "
                 + ("run this code (no model)" if sandbox_only
                    else f"model {ep.model or '-'} · review {ep.review_mode}")
                 + f" · created {ep.created_at:%Y-%m-%d %H:%M:%S}")
    if sandbox_only:
        c = st.columns(4)
        c[0].metric("sandbox time", safe.label(fmt_ms(ep.sandbox_ms)))
    else:
        c = st.columns(4)
        c[0].metric("attempts", safe.label(f"{ep.attempts}/{ep.max_iterations}"))
        c[1].metric("tokens", safe.label(f"{ep.tokens:,}"))
        c[2].metric("LLM time", safe.label(fmt_ms(ep.llm_ms)))
        c[3].metric("sandbox time", safe.label(fmt_ms(ep.sandbox_ms)))
    if ep.status in ("queued", "running") and ep.job_id:
        if st.button("Cancel this episode", key=f"cancel-{ep.id}"):
            status = call(loop.cancel_episode, ep.id)  # waits (briefly) for the episode to end
            if status is not None and status not in ("queued", "running"):
                st.rerun()  # show what is true now: the episode's end, not "running"
            safe.toast("Cancellation requested")
    if ep.status == "cancelled":
        safe.warning("Cancelled before it finished: nothing was learned from it.")
    elif ep.error:
        safe.error("The episode ended with an error")
        safe.code(ep.error)
    evs = views.events(ep.id)
    fig = timeline(evs)
    if fig is not None:
        with st.expander("Timeline"):
            st.plotly_chart(fig, width="stretch", key=f"timeline-{ep.id}-{len(evs)}")
    calls = views.llm_calls(ep.id, also=[i for e in evs for i in views.call_ids_of(e.payload)])
    numbers = {c.id: c.n for c in calls}
    live_output: dict[int, list[str]] = {}
    executed = {e.attempt for e in evs if e.kind == "execute"}
    for e in evs:
        if e.kind == "output":
            if e.attempt not in executed:
                live_output.setdefault(e.attempt or 0, []).append(e.payload.get("text", ""))
            continue
        render_event(e, ep.language, numbers)
    for attempt, chunks in live_output.items():
        safe.caption(f"live output, attempt {attempt}")
        output_box("".join(chunks))
    if calls or not sandbox_only:
        render_llm_calls(ep.id, focus_call, calls)
    links: list[tuple[str, str, str, dict[str, str]]] = []
    if ep.delta_id:
        d = views.delta_with_ops(ep.delta_id)
        status = d.delta.status if d is not None else "?"
        label = (f"Review delta {ep.delta_id}" if status == "pending"
                 else f"Delta {ep.delta_id} ({status.replace('_', ' ')})")
        links.append(("app_pages/playbook.py", label, "📝", {"playbook": ep.playbook_id, "delta": ep.delta_id}))
    if views.reflection_for(ep.id):
        links.append(("app_pages/reflection.py", "Open the reflection", "🔍", {"episode": ep.id}))
    links.append(("app_pages/playbook.py", f"Playbook {ep.playbook_id}", "📒", {"playbook": ep.playbook_id}))
    if ep.status not in ("queued", "running"):
        links.append(("app_pages/playground.py", "Re-run with edits", "🔁", {"rerun": ep.id}))
    if ep.rerun_of:
        links.append(("app_pages/compare.py", f"Compare with {ep.rerun_of}, which it re-ran", "⚖️",
                      {"a": ep.rerun_of, "b": ep.id}))
    for start in range(0, len(links), 3):
        for col, (page, label, icon, params) in zip(st.columns(3), links[start:start + 3]):
            col.page_link(page, label=safe.label(label), icon=icon, query_params=params)
    others = views.comparable_episodes(ep)
    if others:
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        other = c1.selectbox("Compare with", list(others), format_func=others.__getitem__,
                             key=f"compare-with-{ep.id}", help="The same task first, then the latest episodes")
        c2.page_link("app_pages/compare.py", label="Compare side by side", icon="⚖️",
                     query_params={"a": ep.id, "b": other})


def live_trace(episode_id: str, focus_call: Optional[str] = None) -> None:
    """Refresh every second while the episode runs, then stop refreshing; `focus_call` opens one model call."""
    ep = views.get_episode(episode_id)
    running = ep is not None and ep.status in ("queued", "running")

    @st.fragment(run_every=1.0 if running else None)
    def _view() -> None:
        render_trace(episode_id, focus_call)
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
        safe.error(plain_message(exc))
        return None
    if success:
        safe.toast(success)
    return out
