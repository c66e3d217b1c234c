"""Playbook inspector: review pending deltas op by op, browse and edit bullets,
compare and restore versions, import and export."""

import difflib

import streamlit as st

from core import curves, views
from core import playbook as P
from core.playbook import portability, versions
from core.storage.models import DeltaOp
from ui import outcome, safe
from ui.components import STATUS_ICON, call, friendly_errors, query_param

safe.title("📒 Playbooks")


def new_playbook_form(key: str) -> None:
    """Create a playbook here; its id is how episodes, benchmarks and agents name it."""
    with st.form(key):
        new_id = st.text_input("New playbook id", key=f"{key}-id",
                               help="1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        if st.form_submit_button("Create playbook") and new_id.strip():
            if call(P.get_or_create_playbook, new_id.strip()) is not None:
                st.session_state["flash"] = f"Created playbook {new_id.strip()}"
                st.query_params.clear()
                st.query_params["playbook"] = new_id.strip()
                st.rerun()


def _picked() -> None:
    """The user chose another playbook: the URL follows (deep links into the old one no longer apply)."""
    st.query_params.clear()
    st.query_params["playbook"] = st.session_state["pb_select"]


want = query_param("playbook")
show_bench = st.session_state.get("show_bench_pbs", False)
ids = views.playbook_ids(include_bench=show_bench)
if want and want not in ids and want in views.playbook_ids(include_bench=True):
    ids.append(want)  # a link to a benchmark's playbook opens it
if not ids:
    safe.info("No playbooks yet. They are created by the first episode that learns, or here:")
    new_playbook_form("first_pb")
    st.stop()
if want and want not in ids:
    safe.warning(f"There is no playbook {want!r}. Pick one below, or create it.")
if st.session_state.get("pb_select") not in ids or (want in ids and want != st.session_state.get("pb_select")):
    st.session_state["pb_select"] = want if want in ids else ids[0]  # the link, else the one used last
s1, s2 = st.columns([3, 1], vertical_alignment="bottom")
pid = s1.selectbox("Playbook", ids, key="pb_select", on_change=_picked,
                   help="The one used last comes first.")
s2.toggle("Benchmark playbooks", key="show_bench_pbs", help="Show the playbooks benchmark runs made for themselves")
with st.expander("New playbook"):
    new_playbook_form("new_pb")
pb = P.get_playbook(pid)
assert pb is not None
n_pending = views.count_pending(pid)
c = st.columns(4)
c[0].metric("version", safe.label(pb.current_version))
c[1].metric("active bullets", safe.label(P.count_bullets(pid)))
c[2].metric("pending deltas", safe.label(n_pending))
c[3].metric("environment", safe.label(pb.environment))


def diff_html(before: str, after: str, block: bool = True) -> safe.Html:
    """Word-level before/after with removals struck through and additions marked."""
    a, b = before.split(), after.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if op in ("delete", "replace"):
            out.append(safe.html('<del style="background:#ffd7d5">{}</del>', " ".join(a[i1:i2])))
        if op in ("insert", "replace"):
            out.append(safe.html('<ins style="background:#ccffd8;text-decoration:none">{}</ins>', " ".join(b[j1:j2])))
        if op == "equal":
            out.append(safe.html("{}", " ".join(a[i1:i2])))
    words = safe.html(" ").join(out)
    return safe.html('<div style="line-height:1.6">{}</div>', words) if block else words


def show_op(op: DeltaOp, texts: dict[str, str]) -> None:
    """One proposed op. Ids, bullets and the model's why and evidence come from models and agents: escaped."""
    if op.type == "ADD":
        safe.show_html(safe.html('<div style="background:#e6ffec;padding:6px;border-radius:4px">+ {} '
                                 "<small>({})</small></div>", op.content or "", op.section or "strategies"))
    elif op.type == "UPDATE":
        before = op.before or texts.get(op.bullet_id or "", "")
        left, right = st.columns(2)
        with left:
            safe.caption(f"before [{op.bullet_id}]")
            safe.show_html(safe.html('<div style="background:#fff1f0;padding:6px">{}</div>', before))
        with right:
            safe.caption("after")
            safe.show_html(safe.html('<div style="background:#e6ffec;padding:6px">{}</div>', op.content or ""))
        safe.show_html(diff_html(before, op.content or ""))
    elif op.type == "REMOVE":
        safe.show_html(safe.html('<div style="background:#ffebe9;padding:6px">− [{}] <del>{}</del></div>',
                                 op.bullet_id or "", op.before or texts.get(op.bullet_id or "", "")))
    elif op.type == "TAG":
        st.text(f"[{op.bullet_id}] {texts.get(op.bullet_id or '', '(no such bullet)')} → {op.tag} +1")
    elif op.type == "MERGE":
        for bid in op.bullet_ids:
            safe.show_html(safe.html('<div style="background:#ffebe9;padding:4px">− [{}] {}</div>', bid,
                                     texts.get(bid, "(missing)")))
        safe.show_html(safe.html('<div style="background:#e6ffec;padding:6px">+ {}</div>', op.content or ""))
    if op.justification:  # model text: shown as text, never markdown
        st.text(f"why: {op.justification}")
    if op.evidence:
        st.text(f"evidence: {op.evidence}")


def decide(delta_id: str, staged: list[tuple[DeltaOp, bool]]) -> None:
    """Record the decisions on these ops together: the approved ones land as one version."""
    decisions = []
    for op, approve in staged:
        edited = st.session_state.get(f"edit-{op.oid}")
        content = edited if approve and edited is not None and edited != (op.content or "") else None
        decisions.append(P.Decision(op.oid, approve, st.session_state.get(f"note-{op.oid}") or None, content))  # type: ignore[arg-type]
    res = call(P.decide_ops, delta_id, decisions, actor="reviewer")
    if res is not None:
        approved = sum(a for _, a in staged)
        st.session_state["flash"] = (f"Approved {approved}, rejected {len(staged) - approved}: version {res.version}"
                                     if res.version else f"Rejected {len(staged)} op(s)")
        for op, _ in staged:
            st.session_state.pop(f"stage-{op.oid}", None)


UNDECIDED, APPROVE, REJECT = "undecided", "✅ Approve", "❌ Reject"
STAGE = (UNDECIDED, APPROVE, REJECT)
CHANGED = "background:#fff9db;border-left:4px solid #f59f00;padding:4px 8px"
BEFORE = "background:#fff1f0;border-left:4px solid #e03131;padding:4px 8px"
AFTER = "background:#e6ffec;border-left:4px solid #2f9e44;padding:4px 8px"
REMOVED = "background:#ffebe9;border-left:4px solid #e03131;padding:4px 8px"
DIFF_PAGE = 100  # diff lines drawn at once: a 5,000-bullet import is 50 pages, not one 5,000-line page


TAB_NAMES = ["Review", "Bullets", "Versions", "Import / export"]  # fixed names: the URL's ?tab= names them
# a deep link opens the tab it points into: ?diff= the versions, ?bullet= the bullets, otherwise the review
default_tab = TAB_NAMES[2] if query_param("diff") else TAB_NAMES[1] if query_param("bullet") else None
# Lazy tabs bound to the URL: only the open tab runs (a 5,000-bullet table is not built while reviewing),
# and a copied link reopens the same tab.
tab_review, tab_bullets, tab_versions, tab_io = st.tabs(safe.labels(TAB_NAMES), key="tab", bind="query-params",
                                                       default=safe.label(default_tab) if default_tab else None)

if msg := st.session_state.pop("flash", None):
    safe.toast(msg)

# ------------------------------------------------------------------ review
with tab_review, friendly_errors("show pending deltas"):
    if tab_review.open:  # lazy: only the tab on screen is computed and sent
        focus = query_param("delta")
        pending = views.pending_deltas(pid)
        if focus and all(p.delta.id != focus for p in pending):
            extra = views.delta_with_ops(focus)
            if extra is None:
                safe.warning(f"There is no delta {focus!r}.")
            elif extra.delta.playbook_id != pid:
                safe.warning(f"Delta {focus} belongs to playbook {extra.delta.playbook_id}, not {pid}.")
                st.page_link("app_pages/playbook.py", label=safe.label(f"Open it in {extra.delta.playbook_id}"),
                             icon="📒", query_params={"playbook": extra.delta.playbook_id, "delta": focus})
            else:
                pending.insert(0, extra)
        if not pending:
            safe.info("Nothing waiting for review. Deltas wait here when the review mode is manual.")
        for item in pending:
            d = item.delta
            with st.container(border=True):
                task = (item.task[:120] + "…" if len(item.task) > 120 else item.task) if item.task else ""
                safe.markdown(safe.md_format("**{} Delta {}** · proposed by {} · {} · {} op(s)",
                                             STATUS_ICON.get(d.status, ""), d.id, d.source, d.status.replace("_", " "),
                                             len(item.ops))
                              + (safe.md_format("  \nfrom a run of: _{}_", task.strip()) if task.strip()
                                 else safe.md("")))
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
                    h2.button(safe.label(f"✅ Approve all {len(open_ops)}"), key=f"approve-all-{d.id}", on_click=decide,
                              args=(d.id, [(op, True) for op in open_ops]), width="stretch")
                    h3.button(safe.label(f"❌ Reject all {len(open_ops)}"), key=f"reject-all-{d.id}", on_click=decide,
                              args=(d.id, [(op, False) for op in open_ops]), width="stretch")
                for op in item.ops:
                    with st.container(border=True):
                        note = (op.note or "").strip()
                        safe.markdown(safe.md_format("**{}** · op {} of {}", op.type, op.seq + 1, len(item.ops))
                                      + (safe.md("") if op.decision == "pending"
                                         else safe.md_format(" · {} by {}", op.decision, op.decided_by))
                                      + (safe.md_format(" · _{}_", note) if note else safe.md("")))
                        show_op(op, texts)
                        if op.decision != "pending":
                            continue
                        if op.type in ("ADD", "UPDATE", "MERGE"):
                            st.text_area("Edit the text before approving (optional)", op.content or "",
                                         key=f"edit-{op.oid}", height=80)
                        n1, b1 = st.columns([3, 2], vertical_alignment="bottom")
                        n1.text_input("Note (optional)", key=f"note-{op.oid}")
                        b1.segmented_control("Decision", STAGE, key=f"stage-{op.oid}", default=UNDECIDED,
                                             format_func=safe.label)
                staged = [(op, st.session_state.get(f"stage-{op.oid}") == APPROVE) for op in open_ops
                          if st.session_state.get(f"stage-{op.oid}") in (APPROVE, REJECT)]
                if open_ops:
                    n_ok = sum(a for _, a in staged)
                    st.button(safe.label(f"Apply {len(staged)} decision(s): {n_ok} approved, {len(staged) - n_ok} "
                                         "rejected, as one version" if staged else "Choose approve or reject above"),
                              key=f"apply-{d.id}", on_click=decide, args=(d.id, staged), disabled=not staged,
                              type="primary")
                if item.dropped:  # ops the model proposed that never reached this delta, and why
                    with st.container(border=True):
                        outcome.dropped(item.dropped)

# ------------------------------------------------------------------ bullets
with tab_bullets, friendly_errors("show bullets"):
    if tab_bullets.open:  # lazy: only the tab on screen is computed and sent
        f1, f2, f3 = st.columns([2, 1, 1], vertical_alignment="bottom")
        search = f1.text_input("Search", key="bullet_search")
        secs = [""] + views.sections(pid)
        section = f2.selectbox("Section", secs, format_func=lambda s: s or "(all)")
        show_removed = f3.toggle("Show removed", False)
        df = views.bullets_frame(pid, search, section, show_removed)
        safe.caption(f"{len(df)} bullet(s). Select a row to see where it came from, edit or remove it.")
        sel = st.dataframe(df, hide_index=True, width="stretch", height=min(420, 3 + 35 * (max(len(df), 1) + 1)),
                           on_select="rerun",
                           selection_mode="single-row", key="bullets_table",
                           column_config={"content": st.column_config.TextColumn("content", width="large"),
                                          "updated": st.column_config.DatetimeColumn("updated", format="MMM D, HH:mm")})
        picked = (df.iloc[sel.selection.rows[0]]["id"] if sel is not None and sel.selection.rows
                  else query_param("bullet"))
        if picked:
            prov = views.provenance(pid, picked)
            b = prov.get("bullet")
            if b is not None:
                with st.container(border=True):
                    safe.markdown(safe.md_format("**[{}]** helpful={} harmful={} neutral={} · {}", b.id, b.helpful,
                                                 b.harmful, b.neutral, b.status))
                    if b.source_episode_id:
                        st.page_link("app_pages/trace.py",
                                     label=safe.label(f"created by episode {b.source_episode_id}"),
                                     icon="🔎",
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
                            res = call(P.apply_delta, pid, [{"type": "UPDATE", "bullet_id": b.id, "content": new_text,
                                                             "justification": "edited by hand"}], source="human")
                            if res is not None:
                                st.session_state["flash"] = f"Saved {b.id}: version {res.version}"
                                st.rerun()
                        if e2.button("Remove", key=f"bremove-{b.id}"):
                            st.session_state["confirm_remove"] = b.id
                        if st.session_state.get("confirm_remove") == b.id:
                            safe.warning(f"Remove [{b.id}]? It leaves the prompts from the next version on; to undo, "
                                         f"restore version {pb.current_version} in the Versions tab.")
                            k1, k2, _ = st.columns([1, 1, 4])
                            if k1.button("Yes, remove", key=f"bremove-yes-{b.id}", type="primary"):
                                st.session_state.pop("confirm_remove", None)
                                res = call(P.apply_delta, pid, [{"type": "REMOVE", "bullet_id": b.id,
                                                                 "justification": "removed by hand"}], source="human")
                                if res is not None:
                                    st.session_state["flash"] = (f"Removed {b.id}: version {res.version} (restore "
                                                                 f"version {res.version - 1} to undo)")
                                    st.rerun()
                            if k2.button("Keep it", key=f"bremove-no-{b.id}"):
                                st.session_state.pop("confirm_remove", None)
                                st.rerun()
        if st.session_state.pop("add_done", False):  # cleared here, before the form is drawn
            st.session_state["add_content"] = ""
        with st.expander("Add a bullet", expanded=bool(st.session_state.get("add_content"))):
            with st.form("add_bullet"):  # what the user typed stays when adding fails
                sec = st.text_input("Section", "strategies", key="add_section")
                content = st.text_area("Content", key="add_content")
                if st.form_submit_button("Add"):
                    res = call(P.apply_delta, pid, [{"type": "ADD", "section": sec, "content": content,
                                                     "justification": "added by hand"}], source="human")
                    if res is not None:
                        r0 = res.results[0]
                        st.session_state["flash"] = (f"{'Added' if r0.type == 'ADD' else r0.type} {r0.bullet_id}: "
                                                     f"version {res.version}" + (f" ({r0.note})" if r0.note else ""))
                        st.session_state["add_done"] = True
                        st.rerun()

# ------------------------------------------------------------------ versions
with tab_versions, friendly_errors("show versions"):
    if tab_versions.open:  # lazy: only the tab on screen is computed and sent
        vdf = curves.versions_frame(pid)
        numbers = sorted(vdf["version"].tolist(), reverse=True) if not vdf.empty else [0]
        st.dataframe(vdf.sort_values("version", ascending=False)[["version", "created", "bullets", "tokens", "summary",
                                                                    "delta"]],
                     hide_index=True, width="stretch", height=220,
                     column_config={"created": st.column_config.DatetimeColumn("created", format="MMM D, HH:mm:ss"),
                                    "summary": st.column_config.TextColumn("summary", width="large")})
        link = query_param("diff") or ""
        da, db = (link.split("..") + [""])[:2] if ".." in link else ("", "")
        if link and not (da.isdigit() and db.isdigit() and int(da) in numbers and int(db) in numbers):
            safe.warning(f"The link asks for the diff {link!r}, but playbook {pid} has versions 0 to "
                         f"{pb.current_version}. Pick two below.")
        default_b = int(db) if db.isdigit() and int(db) in numbers else numbers[0]
        default_a = int(da) if da.isdigit() and int(da) in numbers else (numbers[1] if len(numbers) > 1 else numbers[0])

        def _diff_picked() -> None:  # the URL follows the chosen versions, so it can be shared
            st.query_params["diff"] = f"{st.session_state['diff_a']}..{st.session_state['diff_b']}"

        v1, v2 = st.columns(2)
        a = v1.selectbox("From version", numbers, index=numbers.index(default_a), key="diff_a", on_change=_diff_picked)
        b = v2.selectbox("To version", numbers, index=numbers.index(default_b), key="diff_b", on_change=_diff_picked)
        base = st.context.url.split("?")[0] if st.context.url else ""
        st.code(f"{base}?playbook={pid}&diff={a}..{b}", language="text")  # copy button in its corner
        diff = versions.diff_versions(pid, int(a), int(b))
        if diff.empty:
            safe.info("No differences.")
        else:
            safe.markdown(safe.md_format("**Version {} → {}**: {} added · {} removed · {} changed", a, b,
                                         len(diff.added), len(diff.removed), len(diff.changed)))
        n_add, n_rem = len(diff.added), len(diff.removed)
        pages = max(1, -(-(n_add + n_rem + len(diff.changed)) // DIFF_PAGE))
        page_no = int(st.number_input(safe.label(f"Page (of {pages}, {DIFF_PAGE} lines each)"), 1, pages, 1,
                                      key="diff_page")) \
            if pages > 1 else 1
        lo, hi = (page_no - 1) * DIFF_PAGE, page_no * DIFF_PAGE  # the page's lines: added, then removed, then changed
        page_added = diff.added[lo:hi]
        page_removed = diff.removed[max(0, lo - n_add):max(0, hi - n_add)]
        page_changed = diff.changed[max(0, lo - n_add - n_rem):max(0, hi - n_add - n_rem)]
        for x in page_added:
            safe.show_html(safe.html('<div style="{}">'
                                     "+ [{}] {}</div>", AFTER, x.bullet_id, x.content))
        for x in page_removed:
            safe.show_html(safe.html('<div style="{}">'
                                     "− [{}] <del>{}</del></div>", REMOVED, x.bullet_id, x.content))
        for before, after in page_changed:
            counters = " · ".join(f"{k} {getattr(before, k)} → {getattr(after, k)}"
                                  for k in ("helpful", "harmful", "neutral", "section", "status")
                                  if getattr(before, k) != getattr(after, k))
            small = safe.html("<br><small>{}</small>", counters) if counters else safe.html("")
            if before.content == after.content:  # only counters, section or status changed
                safe.show_html(safe.html('<div style="{}">'
                                         "~ [{}] {}{}</div>", CHANGED, after.bullet_id, after.content, small))
                continue
            # the text changed: before and after side by side, the words that changed marked
            left, right = st.columns(2)
            with left:
                safe.show_html(safe.html('<div style="{}">'
                                         "<small>version {}</small><br>[{}] {}</div>", BEFORE, a, before.bullet_id,
                                         before.content))
            with right:
                safe.show_html(safe.html('<div style="{}">'
                                         "<small>version {}</small><br>[{}] {}{}</div>", AFTER, b, after.bullet_id,
                                         diff_html(before.content, after.content, block=False), small))
        st.divider()
        r1, r2 = st.columns([1, 2], vertical_alignment="bottom")
        rv = r1.selectbox("Restore version", numbers, key="restore_pick", index=1 if len(numbers) > 1 else 0)
        if r2.button(safe.label(f"Restore version {rv} as a new version"), key="restore_btn"):
            if (v := call(versions.restore_version, pid, int(rv), actor="reviewer")) is not None:
                st.session_state["flash"] = f"Restored version {rv} as version {v}"
                st.rerun()

# ------------------------------------------------------------------ import / export
with tab_io, friendly_errors("import or export"):
    if tab_io.open:  # lazy: only the tab on screen is computed and sent
        e1, e2 = st.columns(2)
        e1.download_button("Export JSON (lossless)", portability.export_json(pid), file_name=f"{pid}.json",
                           mime="application/json")
        e2.download_button("Export Markdown", portability.export_markdown(pid), file_name=f"{pid}.md",
                           mime="text/markdown")
        up = st.file_uploader("Import: our JSON or Markdown, an ace-agent text playbook, or a kayba skillbook JSON",
                              type=["json", "md", "txt"], key=f"import-{st.session_state.get('imports', 0)}")
        replace = st.checkbox("Replace the current bullets")
        if up is not None and st.button("Import"):
            with st.spinner(safe.label(f"Importing {up.name} ({up.size / 1e6:.1f} MB)…")):
                res = call(portability.import_playbook, pid, up.getvalue(), replace=replace, actor="reviewer")
            if res is not None:
                st.session_state["flash"] = f"Imported {res[0]:,} bullets from {up.name}: version {res[1]}"
                st.session_state["imports"] = st.session_state.get("imports", 0) + 1  # an empty uploader: no repeat
                st.rerun()
