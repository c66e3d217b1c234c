"""Streamlit entry point: navigation over app_pages/, the status sidebar, the in-app worker.

The folder is not called pages/: Streamlit would then run a page on its own
(without this file) when a deep link is a new server's first request."""

import streamlit as st

from core import worker
from core.config import get_settings
from core.redaction import install_logging
from ui.components import sidebar_status

install_logging()  # every log line of this process (the worker thread's too) is redacted

st.set_page_config(page_title="ACE Playground", page_icon="🧠", layout="wide")

if get_settings().worker_in_app:
    worker.start_in_background()  # queued episodes run even with the browser closed

pages = [
    st.Page("app_pages/playground.py", title="Playground", icon="🧪", default=True),
    st.Page("app_pages/trace.py", title="Execution trace", icon="🔎"),
    st.Page("app_pages/reflection.py", title="Reflections", icon="🔍"),
    st.Page("app_pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("app_pages/playbook.py", title="Playbooks", icon="📒"),
    st.Page("app_pages/learning.py", title="Learning curves", icon="📈"),
    st.Page("app_pages/benchmarks.py", title="Benchmarks", icon="🏁"),
]
nav = st.navigation(pages)
sidebar_status()
nav.run()
