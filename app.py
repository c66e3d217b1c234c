"""Streamlit entry point: navigation over pages/, the status sidebar, the in-app worker."""

import streamlit as st

from core import jobs
from core.config import get_settings
from ui.components import sidebar_status

st.set_page_config(page_title="ACE Playground", page_icon="🧠", layout="wide")

if get_settings().worker_in_app:
    jobs.ensure_background_worker()  # queued episodes run even with the browser closed

pages = [
    st.Page("pages/playground.py", title="Playground", icon="🧪", default=True),
    st.Page("pages/trace.py", title="Execution trace", icon="🔎"),
    st.Page("pages/reflection.py", title="Reflections", icon="🔍"),
    st.Page("pages/playbook.py", title="Playbooks", icon="📒"),
    st.Page("pages/learning.py", title="Learning curves", icon="📈"),
    st.Page("pages/benchmarks.py", title="Benchmarks", icon="🏁"),
]
nav = st.navigation(pages)
sidebar_status()
nav.run()
