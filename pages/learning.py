"""Learning curves: is the agent getting better, and what does it cost?"""

import pandas as pd
import plotly.express as px
import streamlit as st

from core import bench, views
from ui.components import friendly_errors, query_param

st.title("📈 Learning curves")

with friendly_errors("draw the learning curves"):
    pbs = ["(all)"] + views.playbook_ids()
    want = query_param("playbook")
    pb = st.selectbox("Playbook", pbs, index=pbs.index(want) if want in pbs else 0)
    pid = None if pb == "(all)" else pb
    df = views.learning_frame(pid)
    if df.empty:
        st.info("No finished episodes yet. Run some from the Playground (or a benchmark) and come back.")
    else:
        c = st.columns(4)
        c[0].metric("episodes", len(df))
        c[1].metric("success rate", f"{df['success'].mean():.0%}")
        c[2].metric("mean attempts", f"{df['attempts'].mean():.2f}")
        c[3].metric("tokens", f"{int(df['tokens'].sum()):,}")
        fig = px.scatter(df, x="n", y="success", color="playbook", opacity=0.35,
                         labels={"n": "episode", "success": "success (1) / failure (0)"})
        for name, g in df.groupby("playbook"):
            fig.add_scatter(x=g["n"], y=g["rolling_success"], mode="lines", name=f"{name}: rolling mean (10)")
        fig.update_layout(title="Success per episode", height=360, yaxis_range=[-0.05, 1.05])
        st.plotly_chart(fig, width="stretch")
        l, r = st.columns(2)
        ok = df[df["success"] == 1]
        if not ok.empty:
            l.plotly_chart(px.line(ok, x="n", y="attempts", color="playbook", markers=True,
                                   title="Attempts until success", labels={"n": "episode"}), width="stretch")
        r.plotly_chart(px.line(df, x="n", y="tokens", color="playbook", title="Tokens per episode",
                               labels={"n": "episode"}), width="stretch")
        st.plotly_chart(px.line(df, x="n", y="latency_s", color="playbook", title="Latency per episode (s)",
                                labels={"n": "episode", "latency_s": "seconds"}), width="stretch")
    vdf = views.versions_frame(pid)
    if not vdf.empty:
        l, r = st.columns(2)
        l.plotly_chart(px.line(vdf, x="version", y="bullets", color="playbook", markers=True,
                               title="Playbook size across versions"), width="stretch")
        r.plotly_chart(px.line(vdf, x="version", y="tokens", color="playbook", markers=True,
                               title="Rendered playbook tokens across versions"), width="stretch")

with friendly_errors("show benchmark runs"):
    runs = [r for r in bench.list_runs(20) if r.get("ace_test_pass_rate") is not None]
    if runs:
        rows = [{"run": f"{r['suite']} · {r['id'][-6:]}", "arm": arm, "pass rate": r[key]}
                for r in runs for arm, key in (("baseline", "baseline_test_pass_rate"), ("ACE", "ace_test_pass_rate"))
                if r.get(key) is not None]
        st.plotly_chart(px.bar(pd.DataFrame(rows), x="run", y="pass rate", color="arm", barmode="group",
                               range_y=[0, 1], title="Benchmarks: held-out pass rate, baseline vs ACE"),
                        width="stretch")
        st.page_link("pages/benchmarks.py", label="Benchmark details", icon="🏁")
