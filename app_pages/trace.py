"""Live execution trace: every episode, and every step of one as it happens."""

import streamlit as st

from core import views
from ui import safe
from ui.components import STATUS_ICON, friendly_errors, live_trace, query_param

safe.title("🔎 Execution trace")

with friendly_errors("list the episodes"):
    c1, c2, c3 = st.columns([1, 1, 2])
    pbs = ["(all)"] + views.playbook_ids()
    want_pb = query_param("playbook")
    pb = c1.selectbox("Playbook", pbs, index=pbs.index(want_pb) if want_pb in pbs else 0)
    statuses = ["(all)", "queued", "running", "succeeded", "failed", "error", "cancelled"]
    status = c2.selectbox("Status", statuses)
    search = c3.text_input("Search tasks", "")
    df = views.episodes_frame(None if pb == "(all)" else pb, None if status == "(all)" else status, search=search)
    if df.empty:
        safe.info("No episodes yet. Run one from the Playground.")
    else:
        df.insert(0, "", df["status"].map(lambda s: STATUS_ICON.get(s, "")))
        df["mode"] = df["mode"].replace({"sandbox_only": "no LLM"})
        df = df[["", "task", "status", "attempts", "tokens", "playbook", "mode", "created", "id"]]
        safe.caption(f"{len(df)} episode(s), newest first. Select a row to open its trace.")
        event = st.dataframe(df, hide_index=True, width="stretch", height=260, on_select="rerun",
                             selection_mode="single-row", key="episodes_table",
                             column_config={"id": st.column_config.TextColumn("episode"),
                                            "task": st.column_config.TextColumn("task", width="large"),
                                            "created": st.column_config.DatetimeColumn("created",
                                                                                       format="MMM D, HH:mm:ss")})
        rows = event.selection.rows if event is not None else []
        if rows:
            picked = df.iloc[rows[0]]["id"]
            if picked != query_param("episode"):
                st.query_params["episode"] = picked
                st.rerun()

episode_id = query_param("episode")
if episode_id:
    st.divider()
    with friendly_errors("show the episode"):
        live_trace(episode_id, query_param("call"))
