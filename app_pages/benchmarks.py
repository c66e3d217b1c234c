"""Benchmarks: does learning help? Baseline against ACE on held-out tasks."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core import bench, compare, worker
from core.bench import suites
from core.config import get_settings
from ui import safe
from ui.components import call, friendly_errors, llm_missing_message, query_param

settings = get_settings()
PAIRS_SHOWN = 50
safe.title("🏁 Benchmarks")

with friendly_errors("list suites"), st.expander("Start a benchmark run", expanded=not bench.list_runs(1)):
    available = suites.list_suites()
    names = [s["name"] for s in available if not s.get("error")]
    with st.form("start_bench"):
        c1, c2, c3, c4, c5 = st.columns(5)
        suite = c1.selectbox("Suite", names, format_func=lambda n: next(
            (f"{n} ({s['tasks']} tasks)" for s in available if s["name"] == n), n))
        epochs = c2.number_input("Epochs", 1, 10, 2)
        split = c3.text_input("Train split", "0.5", help="fraction of tasks to learn on; the rest is the test split")
        limit = c4.number_input("Limit tasks (0 = all)", 0, 1000, 10)
        conc = c5.number_input("Concurrency", 1, 16, 2)
        workflow = st.radio("Workflow", ["single", "review"], horizontal=True,
                            help="review: a generator, a reviewer and an optimizer, each learning its own playbook")
        go = st.form_submit_button("Start", disabled=not settings.llm_configured)
    if not settings.llm_configured:
        safe.info(llm_missing_message())
    if go:
        run_id = call(bench.start_bench, suite, epochs=int(epochs), split=bench.parse_split(split),
                      limit=int(limit) or None, concurrency=int(conc), workflow=workflow, success="Benchmark queued")
        if run_id:
            if settings.worker_in_app:
                worker.start_in_background()
            st.query_params["run"] = run_id
            st.session_state.pop("bench_run", None)  # the selector opens on the new run
            st.rerun()  # the table and the selector list the new run at once
    up = st.file_uploader("Add a suite (JSONL: task, language, tests or expected_output, tags, id)", type=["jsonl"])
    new_name = st.text_input("Suite name", key="suite_name")
    if up is not None and new_name and st.button("Add suite"):
        if call(suites.add_suite, new_name.strip(), up.getvalue(), success=f"Added suite {new_name}") is not None:
            st.rerun()

with friendly_errors("show benchmark runs"):
    runs = bench.list_runs(50)
    if not runs:
        safe.info(safe.md("No benchmark runs yet. Start one above, or from a shell: `ace bench python --epochs 2`."))
        st.stop()
    active = any(r["status"] in ("queued", "running") for r in runs)

    @st.fragment(run_every=2.0 if active else None)
    def runs_table() -> None:
        """The runs with their status and pass rates, refreshed with the progress below (it once said "queued"
        while the progress bar said done); a rate not measured yet is blank, not "None"."""
        fresh = bench.list_runs(50)
        table = pd.DataFrame([{"run": r["id"], "suite": r["suite"], "status": r["status"],
                               "baseline (test)": r.get("baseline_test_pass_rate"),
                               "ACE (test)": r.get("ace_test_pass_rate"), "improvement": r.get("improvement")}
                              for r in fresh])
        for c in ("baseline (test)", "ACE (test)", "improvement"):
            table[c] = pd.to_numeric(table[c], errors="coerce")
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(c, format="percent")
                                    for c in ("baseline (test)", "ACE (test)", "improvement")})

    runs_table()
    ids = [r["id"] for r in runs]
    want = query_param("run")
    if want and want not in ids:
        safe.warning(f"There is no benchmark run {want!r}. Pick one below.")

    def _picked() -> None:  # the URL follows the user's choice (and only that: a bad link stays as it was)
        st.query_params["run"] = st.session_state["bench_run"]

    run_id = st.selectbox("Run", ids, index=ids.index(want) if want in ids else 0, key="bench_run",
                          on_change=_picked)

    @st.fragment(run_every=2.0 if bench.bench_progress(run_id)["status"] in ("queued", "running") else None)
    def show_run() -> None:
        prog = bench.bench_progress(run_id)
        st.progress(prog["fraction"], text=safe.label(f"{prog['status']}: {prog['done']}/{prog['total']} episodes"))
        if prog.get("error"):
            safe.error(prog["error"])
        buttons = st.columns([1, 1, 1, 3])
        i = 0
        if prog["status"] in ("queued", "running"):
            buttons[0].button("Cancel", key="bench_cancel", on_click=lambda: call(bench.cancel_bench, run_id))
            i = 1
        elif prog["status"] in ("failed", "cancelled"):
            buttons[0].button("Resume", key="bench_resume", on_click=lambda: call(bench.resume_bench, run_id))
            i = 1
        buttons[i].download_button("⬇ CSV", bench.export_csv(run_id), file_name=f"{run_id}.csv", mime="text/csv")
        buttons[i + 1].download_button("⬇ JSON", bench.export_json(run_id), file_name=f"{run_id}.json",
                                       mime="application/json")
        curve = pd.DataFrame(bench.learning_curve(run_id))
        if curve.empty:
            safe.info("No results yet: the first episodes of this run are still running.")
            return
        arms = {"category_orders": {"arm": ["baseline", "ace"]},
                "color_discrete_map": {"baseline": "#adb5bd", "ace": "#4c6ef5"}}
        legend = dict(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, title_text=""))
        test = curve[curve["phase"] == "test"]
        left, right = st.columns(2)
        if not test.empty:
            fig = px.bar(test, x="arm", y="pass_rate", color="arm", range_y=[0, 1.1], text_auto=".0%",
                         labels={"pass_rate": "pass rate"}, title="Held-out test split: baseline vs ACE", **arms)
            fig.update_traces(textposition="outside")
            left.plotly_chart(fig.update_layout(yaxis_tickformat=".0%", **legend), width="stretch")
        train = curve[curve["phase"] == "train"]
        if not train.empty:
            fig = px.line(train, x="epoch", y="pass_rate", color="arm", markers=True, range_y=[-0.05, 1.05],
                          labels={"pass_rate": "pass rate"}, title="Pass rate per epoch (train split)", **arms)
            fig.update_traces(marker_size=10)
            right.plotly_chart(fig.update_layout(yaxis_tickformat=".0%", xaxis_dtick=1, **legend), width="stretch")
        st.dataframe(curve[["arm", "phase", "epoch", "tasks", "passed", "pass_rate", "tokens_per_task",
                            "cost_per_task", "duration_ms_per_task"]], hide_index=True, width="stretch",
                     column_config={"pass_rate": st.column_config.NumberColumn("pass rate", format="percent"),
                                    "tokens_per_task": st.column_config.NumberColumn("tokens / task", format="%.0f"),
                                    "cost_per_task": st.column_config.NumberColumn("cost / task", format="$%.4f"),
                                    "duration_ms_per_task": st.column_config.NumberColumn("time / task",
                                                                                          format="%.0f ms")})

    show_run()

    with friendly_errors("list the tasks"):
        pairs = compare.bench_pairs(run_id)
        if not pairs.empty:
            safe.subheader("Per task: the baseline against ACE on the held-out split")
            safe.caption("The same task without and with the playbook. Open a pair to see both episodes side by side.")
            shown = pairs.head(PAIRS_SHOWN)
            for row in shown.itertuples():
                c1, c2, c3, c4 = st.columns([3, 1, 1, 2], vertical_alignment="center")
                c1.text(str(row.task))
                c2.text(("✅" if row.baseline_passed else "❌") + " baseline" if isinstance(row.baseline_episode, str)
                        else "- baseline")
                c3.text(("✅" if row.ace_passed else "❌") + " ACE" if isinstance(row.ace_episode, str) else "- ACE")
                if isinstance(row.baseline_episode, str) and isinstance(row.ace_episode, str):
                    c4.page_link("app_pages/compare.py", label=safe.label(f"compare {row.task}"), icon="⚖️",
                                 query_params={"a": row.baseline_episode, "b": row.ace_episode})
            if len(pairs) > PAIRS_SHOWN:
                safe.caption(f"{len(pairs) - PAIRS_SHOWN} more tasks: the CSV export has them all.")
