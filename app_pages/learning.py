"""Learning curves: is the agent getting better, and what does it cost?"""

import pandas as pd
import plotly.express as px
import streamlit as st

from core import bench, curves, views
from ui import safe
from ui.components import friendly_errors, query_param

safe.title("📈 Learning curves")
LEGEND = dict(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, title_text=""), margin=dict(b=10))

with friendly_errors("draw the learning curves"):
    pbs = ["(all)"] + views.playbook_ids()
    want = query_param("playbook")
    pb = st.selectbox("Playbook", pbs, index=pbs.index(want) if want in pbs else 0)
    pid = None if pb == "(all)" else pb
    df = curves.learning_frame(pid)
    vdf = curves.versions_frame(pid)
    for frame in (df, vdf):  # playbook names are legend entries and hovers: plotly renders <a href> in them
        if not frame.empty:
            frame["playbook"] = frame["playbook"].map(safe.plotly_text)
    names = sorted(set(df["playbook"]) | set(vdf["playbook"])) if not (df.empty and vdf.empty) else []
    palette = px.colors.qualitative.Plotly
    cmap = {n: palette[i % len(palette)] for i, n in enumerate(names)}  # one colour per playbook on every chart
    left_out = curves.episodes_left_out(pid)
    if left_out:
        safe.caption("Counted: finished model episodes, which learn. Left out: "
                     + ", ".join(f"{n} {what}" for what, n in left_out.items())
                     + " (benchmarks are compared below).")
    if df.empty:
        safe.info("No finished episodes yet. Run some from the Playground (or a benchmark) and come back.")
    else:
        c = st.columns(4)
        c[0].metric("episodes", safe.label(len(df)))
        c[1].metric("success rate", safe.label(f"{df['success'].mean():.0%}"))
        c[2].metric("mean attempts", safe.label(f"{df['attempts'].mean():.2f}"))
        c[3].metric("tokens", safe.label(f"{int(df['tokens'].sum()):,}"))
        if len(df) >= 2:  # the first episode beside the latest: what learning changed, in one click
            st.page_link("app_pages/compare.py", icon="⚖️",
                         label=safe.label(f"Compare the first episode with the latest ({df['id'].iloc[0]} and "
                                          f"{df['id'].iloc[-1]})"),
                         query_params={"a": str(df["id"].iloc[0]), "b": str(df["id"].iloc[-1])})
        # thousands of episodes: about 1,000 points per playbook (every k-th episode; the success line is a
        # rolling mean already) and no per-episode dots: 10,000 SVG markers took 10 s to draw
        big = len(df) > 2000
        if big:
            df = pd.concat(g.iloc[::max(1, len(g) // 1000)] for _, g in df.groupby("playbook"))
        fig = px.line(df, x="n", y="rolling_success", color="playbook", color_discrete_map=cmap,
                      labels={"n": "episode", "rolling_success": "success rate (rolling mean of 10)"})
        for name, g in ([] if big else df.groupby("playbook")):
            fig.add_scatter(x=g["n"], y=g["success"], mode="markers", opacity=0.4, showlegend=False,
                            marker=dict(color=cmap[name], size=9), name=f"{name}: episode",
                            hovertemplate="episode %{x}: %{y}<extra>" + str(name) + "</extra>")
        fig.update_layout(title="Success per episode (rolling mean of 10)" if big else
                          "Success per episode (dots: 1 = passed, 0 = failed; line: rolling mean of 10)",
                          height=380, yaxis_range=[-0.05, 1.05], yaxis_tickformat=".0%", **LEGEND)
        st.plotly_chart(fig, width="stretch")
        left, right = st.columns(2)
        ok = df[df["success"] == 1]
        if not ok.empty:
            left.plotly_chart(px.line(ok, x="n", y="attempts", color="playbook", markers=not big,
                                      color_discrete_map=cmap, title="Attempts until success",
                                      labels={"n": "episode"}).update_layout(**LEGEND), width="stretch")
        right.plotly_chart(px.line(df, x="n", y="tokens", color="playbook", title="Tokens per episode",
                                   markers=not big, color_discrete_map=cmap,
                                   labels={"n": "episode"}).update_layout(**LEGEND), width="stretch")
        st.plotly_chart(px.line(df, x="n", y="latency_s", color="playbook", title="Latency per episode (s)",
                                markers=not big, color_discrete_map=cmap,
                                labels={"n": "episode", "latency_s": "seconds"}).update_layout(**LEGEND),
                        width="stretch")
    if not vdf.empty:
        left, right = st.columns(2)
        left.plotly_chart(px.line(vdf, x="version", y="bullets", color="playbook", markers=True,
                                  color_discrete_map=cmap,
                                  title="Playbook size across versions").update_layout(**LEGEND),
                          width="stretch")
        right.plotly_chart(px.line(vdf, x="version", y="tokens", color="playbook", markers=True,
                                   color_discrete_map=cmap,
                                   title="Rendered playbook tokens across versions").update_layout(**LEGEND),
                           width="stretch")

with friendly_errors("show benchmark runs"):
    runs = [r for r in bench.list_runs(20) if r.get("ace_test_pass_rate") is not None]
    if runs:
        rows = [{"run": safe.plotly_text(f"{r['suite']} · {r['id'][-6:]}"), "arm": arm, "pass rate": r[key]}
                for r in runs for arm, key in (("baseline", "baseline_test_pass_rate"), ("ACE", "ace_test_pass_rate"))
                if r.get(key) is not None]
        safe.subheader("Did ACE help?")
        fig = px.bar(pd.DataFrame(rows), x="run", y="pass rate", color="arm", barmode="group", range_y=[0, 1.1],
                     text_auto=".0%", color_discrete_map={"baseline": "#adb5bd", "ACE": "#4c6ef5"},
                     title="Benchmarks: held-out pass rate, baseline vs ACE")
        fig.update_traces(textposition="outside")
        st.plotly_chart(fig.update_layout(yaxis_tickformat=".0%", **LEGEND), width="stretch")
        labels = {r["id"]: f"{r['suite']} · {r['id']}" for r in runs}
        picked = st.selectbox("Run", list(labels), format_func=labels.__getitem__, key="ace_run")
        by_epoch = curves.ace_by_epoch(picked)
        if not by_epoch.empty:
            fig = px.line(by_epoch, x="stage", y="pass rate", color="tasks", markers=True, range_y=[-0.05, 1.05],
                          title="Success by epoch: the baseline, then ACE as its playbook grows",
                          hover_data={"done": True})
            st.plotly_chart(fig.update_layout(yaxis_tickformat=".0%", **LEGEND), width="stretch")
        st.page_link("app_pages/benchmarks.py", label="Benchmark details", icon="🏁")
