"""Two episodes side by side: task, verdicts, the code of each attempt as a diff, bullets retrieved and
used, reflections, deltas, tokens, cost and time. Everything a model or an agent wrote is shown as text."""

import pandas as pd
import streamlit as st

from core import compare, views
from ui import safe
from ui.components import STATUS_ICON, fmt_ms, friendly_errors, query_param

safe.title("⚖️ Compare episodes")

with friendly_errors("compare the episodes"):
    recent = views.episodes_frame(limit=300)
    a, b = query_param("a"), query_param("b")
    if recent.empty and not (a and b):
        safe.info("No episodes yet. Run two from the Playground (or a benchmark), then compare them here.")
        st.stop()
    labels = {str(r.id): f"{r.id} · {r.status} · {str(r.task)[:60]}" for r in recent.itertuples()}
    for wanted in (a, b):
        if wanted and wanted not in labels:
            labels[wanted] = wanted
    ids = list(labels)

    def _picked() -> None:  # the URL follows the choice: a link to this comparison reopens it
        st.query_params["a"], st.query_params["b"] = st.session_state["cmp_a"], st.session_state["cmp_b"]

    p1, p2 = st.columns(2)
    a = str(p1.selectbox("Episode A", ids, index=ids.index(a) if a in ids else min(1, len(ids) - 1), key="cmp_a",
                         format_func=labels.__getitem__, on_change=_picked))
    b = str(p2.selectbox("Episode B", ids, index=ids.index(b) if b in ids else 0, key="cmp_b",
                         format_func=labels.__getitem__, on_change=_picked))
    sides = {"A": compare.side(a), "B": compare.side(b)}
    missing = [f"{k} ({i})" for k, i, sd in (("A", a, sides["A"]), ("B", b, sides["B"])) if sd is None]
    if missing:
        safe.warning(f"No such episode: {', '.join(missing)}.")
        st.stop()
    sa, sb = sides["A"], sides["B"]
    assert sa is not None and sb is not None
    base = st.context.url.split("?")[0] if st.context.url else ""
    st.code(f"{base}?a={a}&b={b}", language="text")  # a link to this comparison, with a copy button

    def verdict(sd: compare.Side) -> str:
        ep = sd.episode
        return f"{STATUS_ICON.get(ep.status, '')} {ep.status}" + (f" on attempt {ep.attempts}" if ep.success else "")

    rows = {
        "verdict": (verdict(sa), verdict(sb)),
        "playbook": (sa.episode.playbook_id, sb.episode.playbook_id),
        "mode": (sa.episode.mode, sb.episode.mode),
        "model": (sa.episode.model or "-", sb.episode.model or "-"),
        "attempts": (f"{sa.episode.attempts}/{sa.episode.max_iterations}",
                     f"{sb.episode.attempts}/{sb.episode.max_iterations}"),
        "tokens": (f"{sa.episode.tokens:,}", f"{sb.episode.tokens:,}"),
        "cost": (f"${sa.episode.cost:.4f}", f"${sb.episode.cost:.4f}"),
        "model time": (fmt_ms(sa.episode.llm_ms), fmt_ms(sb.episode.llm_ms)),
        "sandbox time": (fmt_ms(sa.episode.sandbox_ms), fmt_ms(sb.episode.sandbox_ms)),
        "wall time": tuple(f"{sd.seconds:.1f} s" if sd.seconds is not None else "-" for sd in (sa, sb)),
        "bullets retrieved": (len(sa.retrieved), len(sb.retrieved)),
        "bullets used": (", ".join(sa.used) or "none", ", ".join(sb.used) or "none"),
        "delta": tuple(f"{sd.delta.id} ({sd.delta.status.replace('_', ' ')}, {len(sd.ops)} op(s))" if sd.delta
                       else "none" for sd in (sa, sb)),
    }
    st.dataframe(pd.DataFrame({"": list(rows), "A": [str(v[0]) for v in rows.values()],
                               "B": [str(v[1]) for v in rows.values()]}), hide_index=True, width="stretch")
    l1, l2 = st.columns(2)
    for col, key, sd in ((l1, "A", sa), (l2, "B", sb)):
        col.page_link("app_pages/trace.py", label=safe.label(f"{key}: open the trace"), icon="🔎",
                      query_params={"episode": sd.episode.id})
        col.page_link("app_pages/playground.py", label=safe.label(f"{key}: re-run with edits"), icon="🔁",
                      query_params={"rerun": sd.episode.id})

    safe.subheader("Task")
    if sa.episode.task == sb.episode.task:
        st.text(sa.episode.task)
    else:
        t1, t2 = st.columns(2)
        t1.text(sa.episode.task)
        t2.text(sb.episode.task)
        safe.caption("The tasks differ.")

    safe.subheader("Code")
    diff = compare.code_diff(sa.final_code, sb.final_code, f"A ({a})", f"B ({b})")
    if diff:
        safe.caption("The last code each wrote, as a diff from A to B")
        st.code(diff, language="diff")
    else:
        safe.caption("Both ended with the same code.")
    for n in range(1, max(len(sa.attempts), len(sb.attempts)) + 1):
        with st.expander(safe.label(f"Attempt {n}"), expanded=False):
            c1, c2 = st.columns(2)
            for col, sd in ((c1, sa), (c2, sb)):
                att = next((x for x in sd.attempts if x.n == n), None)
                if att is None:
                    col.text("(no such attempt)")
                    continue
                col.text(("PASSED" if att.passed else "FAILED" if att.passed is False else "not run")
                         + f" · {att.verdict}")
                col.code(att.code or "(no code)", language=sd.episode.language)

    safe.subheader("Bullets")
    ra, rb = set(sa.retrieved), set(sb.retrieved)
    ua, ub = set(sa.used), set(sb.used)
    b1, b2, b3 = st.columns(3)
    b1.text("retrieved by both:\n" + ("\n".join(sorted(ra & rb)) or "none"))
    b2.text("only A retrieved:\n" + ("\n".join(sorted(ra - rb)) or "none"))
    b3.text("only B retrieved:\n" + ("\n".join(sorted(rb - ra)) or "none"))
    safe.caption(f"used by A: {', '.join(sorted(ua)) or 'none'} · used by B: {', '.join(sorted(ub)) or 'none'}")

    safe.subheader("Reflections")
    f1, f2 = st.columns(2)
    for col, sd in ((f1, sa), (f2, sb)):
        r = sd.reflection
        if r is None:
            col.text("(no reflection)")
            continue
        col.text(f"Key insight: {r.key_insight or '-'}\n\nError: {r.error_identification or '-'}\n\n"
                 f"Root cause: {r.root_cause_analysis or '-'}\n\nCorrect approach: {r.correct_approach or '-'}")

    safe.subheader("What each learned")
    d1, d2 = st.columns(2)
    for col, sd in ((d1, sa), (d2, sb)):
        if sd.delta is None:
            col.text("(no delta)")
            continue
        col.text("\n".join(f"{op.type} {op.bullet_id or ''} {op.content or op.tag or ''} · {op.decision}".strip()
                           for op in sd.ops) or "(an empty delta)")
        col.page_link("app_pages/playbook.py", label=safe.label(f"delta {sd.delta.id}"), icon="📝",
                      query_params={"playbook": sd.episode.playbook_id, "delta": sd.delta.id})
