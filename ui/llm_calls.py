"""Every model call of an episode, like a generation view: the messages sent, the raw reply and the numbers.

Everything a model wrote or was sent is shown as text (`st.text`, `st.code(language=None)`, table cells),
never as markdown or HTML: a reply holding `![x](http://host/p.png)`, `<a href=...>`, `$x$` or `:red[x]`
shows those characters, it does not fetch, link, typeset or colour anything.
"""

from typing import Optional

import streamlit as st

from core import views
from core.views import LLMCallView
from ui import safe

TRACE_PAGE = "app_pages/trace.py"


def _ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def call_label(c: LLMCallView) -> safe.Md:
    """An expander label (labels render markdown): what the server or a model gave is escaped."""
    label = safe.md_format("#{} {} · {} · round {}", c.n, c.role or "?", c.mode or "-", c.round)
    if c.retry:
        label += safe.md_format(" retry {}", c.retry)
    if c.truncated:
        label += safe.md_format(" · ✂️ cut at {} tokens", c.cut_at)
    elif c.finish_reason:
        label += safe.md_format(" · {}", c.finish_reason)
    if c.error:
        label += safe.md(" · ⚠️ error")
    return label + safe.md_format(" · {:,} → {:,} tokens · {}", c.prompt_tokens, c.completion_tokens,
                                  _ms(c.latency_ms))


def render_call(c: LLMCallView) -> None:
    """One call in full: its numbers, messages, reply and error, all as text."""
    st.text(f"call {c.id} · model {c.model or '-'}"
            + (f" · {c.created_at:%Y-%m-%d %H:%M:%S}" if c.created_at else "") + "\n"
            f"mode {c.mode or '-'} · round {c.round_label} · retry {c.retry} · "
            f"cap {c.max_tokens if c.max_tokens is not None else 'none'} · finish {c.finish_label}\n"
            f"tokens {c.prompt_tokens:,} prompt / {c.completion_tokens:,} completion · {_ms(c.latency_ms)}"
            f" · cost ${c.cost:.6f}")
    if c.truncated:
        safe.warning(safe.md_format("✂️ The reply was cut at {} tokens (finish reason: length).", c.cut_at))
    if c.error:
        st.text("error")
        safe.code(c.error)
    for i, (role, content) in enumerate(c.message_texts(), start=1):
        st.text(f"message {i} · {role} · {len(content):,} characters")
        safe.code(content)
    if c.response is None:
        st.text("reply: (none)")
    else:
        st.text(f"reply · {len(c.response):,} characters")
        safe.code(c.response)


def render_llm_calls(episode_id: str, focus: Optional[str] = None,
                     calls: Optional[list[LLMCallView]] = None) -> None:
    """The "Model calls" section of a trace: a compact table, then every call, the linked one (`?call=`) open."""
    calls = views.llm_calls(episode_id) if calls is None else calls
    safe.heading("Model calls")
    if not calls:
        safe.caption(safe.md("No model calls were logged for this episode."))
        return
    cut = sum(c.truncated for c in calls)
    failed = sum(bool(c.error) for c in calls)
    safe.caption(f"{len(calls)} call(s) · {sum(c.prompt_tokens for c in calls):,} prompt + "
               f"{sum(c.completion_tokens for c in calls):,} completion tokens · "
               f"{_ms(sum(c.latency_ms for c in calls))} · ${sum(c.cost for c in calls):.6f}"
               + (f" · {cut} cut at the token cap" if cut else "") + (f" · {failed} failed" if failed else ""))
    st.dataframe(views.llm_calls_frame(calls), hide_index=True, width="stretch", key=f"llm-calls-{episode_id}",
                 column_config={"error": st.column_config.TextColumn("error", width="large"),
                                "cost": st.column_config.NumberColumn("cost", format="$%.6f")})
    for c in calls:
        with st.expander(safe.label(call_label(c)), expanded=focus == str(c.id)):
            render_call(c)


def call_links(episode_id: str, call_ids: list[int], numbers: dict[int, int]) -> None:
    """Links from a trace step to the calls it made, each opening that call in the "Model calls" section."""
    if not call_ids:
        return
    safe.caption(f"model calls of this step: {len(call_ids)}")
    cols = st.columns(min(len(call_ids), 6))
    for i, cid in enumerate(call_ids):
        n = numbers.get(cid)
        name = safe.md_format("call #{}", n) if n else safe.md_format("call {}", cid)
        cols[i % len(cols)].page_link(TRACE_PAGE, label=safe.label(name), icon="💬",
                                      query_params={"episode": episode_id, "call": str(cid)})
