"""Playbook inspector: review pending deltas op by op, browse and edit bullets,
compare and restore versions, import and export."""

import difflib
import html

import streamlit as st

from core import playbook as P
from core import views
from core.playbook import portability, versions
from core.storage.models import DeltaOp
from ui import outcome
from ui.components import STATUS_ICON, call, friendly_errors, query_param

st.title("📒 Playbooks")

ids = views.playbook_ids()
if not ids:
    st.info("No playbooks yet. They are created by the first episode that learns, or here:")
    new_id = st.text_input("New playbook id", key="first_pb")
    if st.button("Create playbook") and new_id:
        if call(P.get_or_create_playbook, new_id.strip(), success=f"Created {new_id}") is not None:
            st.query_params["playbook"] = new_id.strip()
            st.rerun()
    st.stop()

want = query_param("playbook")
pid = st.selectbox("Playbook", ids, index=ids.index(want) if want in ids else 0, key="pb_select")
if pid != want:
    st.query_params["playbook"] = pid
pb = P.get_playbook(pid)
assert pb is not None
n_pending = views.count_pending(pid)
c = st.columns(4)
c[0].metric("version", pb.current_version)
c[1].metric("active bullets", P.count_bullets(pid))
c[2].metric("pending deltas", n_pending)
c[3].metric("environment", pb.environment)


def diff_html(before: str, after: str, block: bool = True) -> str:
    """Word-level before/after with removals struck through and additions marked."""
    a, b = before.split(), after.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f'<del style="background:#ffd7d5">{html.escape(" ".join(a[i1:i2]))}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins style="background:#ccffd8;text-decoration:none">{html.escape(" ".join(b[j1:j2]))}</ins>')
        if op == "equal":
            out.append(html.escape(" ".join(a[i1:i2])))
    return ('<div style="line-height:1.6">' + " ".join(out) + "</div>") if block else " ".join(out)


def show_op(op: DeltaOp, texts: dict[str, str]) -> None:
    if op.type == "ADD":
        st.html(f'<div style="background:#e6ffec;padding:6px;border-radius:4px">+ {html.escape(op.content or "")}'
                f' <small>({op.section or "strategies"})</small></div>')
    elif op.type == "UPDATE":
        before = op.before or texts.get(op.bullet_id or "", "")
        left, right = st.columns(2)
        left.caption(f"before [{op.bullet_id}]")
        left.html(f'<div style="background:#fff1f0;padding:6px">{html.escape(before)}</div>')
        right.caption("after")
        right.html(f'<div style="background:#e6ffec;padding:6px">{html.escape(op.content or "")}</div>')
        st.html(diff_html(before, op.content or ""))
    elif op.type == "REMOVE":
        st.html(f'<div style="background:#ffebe9;padding:6px">− [{op.bullet_id}] '
                f'<del>{html.escape(op.before or texts.get(op.bullet_id or "", ""))}</del></div>')
    elif op.type == "TAG":
        st.text(f"[{op.bullet_id}] {texts.get(op.bullet_id or '', '(no such bullet)')} → {op.tag} +1")
    elif op.type == "MERGE":
        for bid in op.bullet_ids:
            missing = html.escape(texts.get(bid, "(missing)"))
            st.html(f'<div style="background:#ffebe9;padding:4px">− [{bid}] {missing}</div>')
        st.html(f'<div style="background:#e6ffec;padding:6px">+ {html.escape(op.content or "")}</div>')
    if op.justification:  # model text: shown as text, never markdown
        st.text(f"why: {op.justification}")
    if op.evidence:
        st.text(f"evidence: {op.evidence}")


def decide(delta_id: str, ops: list[DeltaOp], approve: bool) -> None:
    decisions = []
    for op in ops:
        edited = st.session_state.get(f"edit-{op.oid}")
        content = edited if approve and edited is not None and edited != (op.content or "") else None
        decisions.append(P.Decision(op.oid, approve, st.session_state.get(f"note-{op.oid}") or None, content))  # type: ignore[arg-type]
    res = call(P.decide_ops, delta_id, decisions, actor="reviewer")
    if res is not None:
        st.session_state["flash"] = (f"Approved {len(res.results)} op(s): version {res.version}" if res.version
                                     else "Recorded the decision")


TAB_NAMES = [f"Review ({n_pending})", "Bullets", "Versions", "Import / export"]
# a deep link opens the tab it points into: ?diff= the versions, ?bullet= the bullets, otherwise the review
default_tab = TAB_NAMES[2] if query_param("diff") else TAB_NAMES[1] if query_param("bullet") else None
tab_review, tab_bullets, tab_versions, tab_io = st.tabs(TAB_NAMES, default=default_tab)

if msg := st.session_state.pop("flash", None):
    st.toast(msg)

# ------------------------------------------------------------------ review
with tab_review, friendly_errors("show pending deltas"):
    focus = query_param("delta")
    pending = views.pending_deltas(pid)
    if focus and all(p.delta.id != focus for p in pending):
        extra = views.delta_with_ops(focus)
        if extra is not None and extra.delta.playbook_id == pid:
            pending.insert(0, extra)
    if not pending:
        st.info("Nothing waiting for review. Deltas wait here when the review mode is manual.")
    for item in pending:
        d = item.delta
        with st.container(border=True):
            task = (item.task[:120] + "…" if len(item.task) > 120 else item.task) if item.task else ""
            st.markdown(f"**{STATUS_ICON.get(d.status, '')} Delta `{d.id}`** · proposed by {d.source} · "
                        f"{d.status.replace('_', ' ')} · {len(item.ops)} op(s)"
                        + (f"  \nfrom a run of: _{task}_" if task else ""))
            if d.reasoning:
                st.text(f"curator's reasoning: {d.reasoning}")
            texts = views.current_texts(pid, [i for op in item.ops for i in ([op.bullet_id] if op.bullet_id else [])
                                              + list(op.bullet_ids or [])])
            open_ops = [op for op in item.ops if op.decision == "pending"]
            h1, h2, h3 = st.columns([2, 1, 1], vertical_alignment="center")
            if d.episode_id:
                h1.page_link("app_pages/trace.py", label="the episode's trace", icon="🔎",
                             query_params={"episode": d.episode_id})
            if len(open_ops) > 1:
                h2.button(f"✅ Approve all {len(open_ops)}", key=f"approve-all-{d.id}", on_click=decide,
                          args=(d.id, open_ops, True), width="stretch")
                h3.button(f"❌ Reject all {len(open_ops)}", key=f"reject-all-{d.id}", on_click=decide,
                          args=(d.id, open_ops, False), width="stretch")
            for op in item.ops:
                with st.container(border=True):
                    st.markdown(f"**{op.type}** · op {op.seq + 1} of {len(item.ops)}"
                                + ("" if op.decision == "pending" else f" · {op.decision} by {op.decided_by}")
                                + (f" · _{op.note}_" if op.note else ""))
                    show_op(op, texts)
                    if op.decision != "pending":
                        continue
                    if op.type in ("ADD", "UPDATE", "MERGE"):
                        st.text_area("Edit the text before approving (optional)", op.content or "",
                                     key=f"edit-{op.oid}", height=80)
                    n1, b1, b2 = st.columns([4, 1, 1], vertical_alignment="bottom")
                    n1.text_input("Note (optional)", key=f"note-{op.oid}")
                    b1.button("✅ Approve", key=f"approve-{op.oid}", on_click=decide, args=(d.id, [op], True),
                              width="stretch")
                    b2.button("❌ Reject", key=f"reject-{op.oid}", on_click=decide, args=(d.id, [op], False),
                              width="stretch")
            if item.dropped:  # ops the model proposed that never reached this delta, and why
                with st.container(border=True):
                    outcome.dropped(item.dropped)

# ------------------------------------------------------------------ bullets
with tab_bullets, friendly_errors("show bullets"):
    f1, f2, f3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    search = f1.text_input("Search", key="bullet_search")
    secs = [""] + views.sections(pid)
    section = f2.selectbox("Section", secs, format_func=lambda s: s or "(all)")
    show_removed = f3.toggle("Show removed", False)
    df = views.bullets_frame(pid, search, section, show_removed)
    st.caption(f"{len(df)} bullet(s). Select a row to see where it came from, edit or remove it.")
    sel = st.dataframe(df, hide_index=True, width="stretch", height=min(420, 3 + 35 * (max(len(df), 1) + 1)),
                       on_select="rerun",
                       selection_mode="single-row", key="bullets_table",
                       column_config={"content": st.column_config.TextColumn("content", width="large"),
                                      "updated": st.column_config.DatetimeColumn("updated", format="MMM D, HH:mm")})
    picked = df.iloc[sel.selection.rows[0]]["id"] if sel is not None and sel.selection.rows else query_param("bullet")
    if picked:
        prov = views.provenance(pid, picked)
        b = prov.get("bullet")
        if b is not None:
            with st.container(border=True):
                st.markdown(f"**[{b.id}]** helpful={b.helpful} harmful={b.harmful} neutral={b.neutral} · {b.status}")
                if b.source_episode_id:
                    st.page_link("app_pages/trace.py", label=f"created by episode {b.source_episode_id}", icon="🔎",
                                 query_params={"episode": b.source_episode_id})
                    st.page_link("app_pages/reflection.py", label="its reflection", icon="🔍",
                                 query_params={"episode": b.source_episode_id})
                for h in prov["history"]:
                    st.text(f"{h['type']} in version {h['version']} ({h['source']}, delta {h['delta']})"
                            + (f": {h['justification']}" if h["justification"] else ""))
                if b.status == "active":
                    new_text = st.text_area("Text", b.content, key=f"bedit-{b.id}")
                    e1, e2, _ = st.columns([1, 1, 4])
                    if e1.button("Save", key=f"bsave-{b.id}") and new_text != b.content:
                        if call(P.apply_delta, pid, [{"type": "UPDATE", "bullet_id": b.id, "content": new_text,
                                                      "justification": "edited by hand"}], source="human",
                                success="Saved as a new version") is not None:
                            st.rerun()
                    if e2.button("Remove", key=f"bremove-{b.id}"):
                        if call(P.apply_delta, pid, [{"type": "REMOVE", "bullet_id": b.id,
                                                      "justification": "removed by hand"}], source="human",
                                success="Removed (soft)") is not None:
                            st.rerun()
    with st.expander("Add a bullet"):
        with st.form("add_bullet", clear_on_submit=True):
            sec = st.text_input("Section", "strategies")
            content = st.text_area("Content")
            if st.form_submit_button("Add"):
                res = call(P.apply_delta, pid, [{"type": "ADD", "section": sec, "content": content,
                                                 "justification": "added by hand"}], source="human")
                if res is not None:
                    r0 = res.results[0]
                    st.success(f"{r0.type} {r0.bullet_id}: version {res.version}"
                               + (f" ({r0.note})" if r0.note else ""))

# ------------------------------------------------------------------ versions
with tab_versions, friendly_errors("show versions"):
    vdf = views.versions_frame(pid)
    numbers = sorted(vdf["version"].tolist(), reverse=True) if not vdf.empty else [0]
    st.dataframe(vdf.sort_values("version", ascending=False)[["version", "created", "bullets", "tokens", "summary",
                                                                "delta"]],
                 hide_index=True, width="stretch", height=220,
                 column_config={"created": st.column_config.DatetimeColumn("created", format="MMM D, HH:mm:ss"),
                                "summary": st.column_config.TextColumn("summary", width="large")})
    link = query_param("diff") or ""
    da, db = (link.split("..") + [""])[:2] if ".." in link else ("", "")
    default_b = int(db) if db.isdigit() and int(db) in numbers else numbers[0]
    default_a = int(da) if da.isdigit() and int(da) in numbers else (numbers[1] if len(numbers) > 1 else numbers[0])
    v1, v2 = st.columns(2)
    a = v1.selectbox("From version", numbers, index=numbers.index(default_a), key="diff_a")
    b = v2.selectbox("To version", numbers, index=numbers.index(default_b), key="diff_b")
    st.caption(f"Link to this diff: ?playbook={pid}&diff={a}..{b}")
    diff = versions.diff_versions(pid, int(a), int(b))
    if diff.empty:
        st.info("No differences.")
    else:
        st.markdown(f"**Version {a} → {b}**: {len(diff.added)} added · {len(diff.removed)} removed · "
                    f"{len(diff.changed)} changed")
    for x in diff.added:
        st.html(f'<div style="background:#e6ffec;border-left:4px solid #2f9e44;padding:4px 8px">'
                f'+ [{x.bullet_id}] {html.escape(x.content)}</div>')
    for x in diff.removed:
        st.html(f'<div style="background:#ffebe9;border-left:4px solid #e03131;padding:4px 8px">'
                f'− [{x.bullet_id}] <del>{html.escape(x.content)}</del></div>')
    for before, after in diff.changed:
        counters = " · ".join(f"{k} {getattr(before, k)} → {getattr(after, k)}"
                              for k in ("helpful", "harmful", "neutral", "section", "status")
                              if getattr(before, k) != getattr(after, k))
        small = f'<br><small>{html.escape(counters)}</small>' if counters else ""
        if before.content == after.content:  # only counters, section or status changed
            st.html(f'<div style="background:#fff9db;border-left:4px solid #f59f00;padding:4px 8px">'
                    f'~ [{after.bullet_id}] {html.escape(after.content)}{small}</div>')
            continue
        left, right = st.columns(2)  # the text changed: before and after side by side, the words that changed marked
        left.html(f'<div style="background:#fff1f0;border-left:4px solid #e03131;padding:4px 8px">'
                  f'<small>version {a}</small><br>[{before.bullet_id}] {html.escape(before.content)}</div>')
        right.html(f'<div style="background:#e6ffec;border-left:4px solid #2f9e44;padding:4px 8px">'
                   f'<small>version {b}</small><br>[{after.bullet_id}] '
                   f'{diff_html(before.content, after.content, block=False)}{small}</div>')
    st.divider()
    r1, r2 = st.columns([1, 2], vertical_alignment="bottom")
    rv = r1.selectbox("Restore version", numbers, key="restore_pick", index=1 if len(numbers) > 1 else 0)
    if r2.button(f"Restore version {rv} as a new version", key="restore_btn"):
        if (v := call(versions.restore_version, pid, int(rv), actor="reviewer")) is not None:
            st.session_state["flash"] = f"Restored version {rv} as version {v}"
            st.rerun()

# ------------------------------------------------------------------ import / export
with tab_io, friendly_errors("import or export"):
    e1, e2 = st.columns(2)
    e1.download_button("Export JSON (lossless)", portability.export_json(pid), file_name=f"{pid}.json",
                       mime="application/json")
    e2.download_button("Export Markdown", portability.export_markdown(pid), file_name=f"{pid}.md",
                       mime="text/markdown")
    up = st.file_uploader("Import: our JSON or Markdown, an ace-agent text playbook, or a kayba skillbook JSON",
                          type=["json", "md", "txt"])
    replace = st.checkbox("Replace the current bullets")
    if up is not None and st.button("Import"):
        res = call(portability.import_playbook, pid, up.getvalue(), replace=replace, actor="reviewer")
        if res is not None:
            st.success(f"Imported {res[0]} bullets: version {res[1]}")
