"""Streamlit entry point: navigation over pages/ and the settings status."""

import streamlit as st

from core.config import get_settings

st.set_page_config(page_title="ACE Playground", page_icon="🧠", layout="wide")


def home() -> None:
    s = get_settings()
    st.title("ACE Playground")
    st.write("Watch an agent learn from real code execution, and curate what it learns.")
    if s.llm_configured:
        st.success(f"Model: `{s.model}` at `{s.openai_base_url or 'OpenAI'}`")
    else:
        st.warning("No language model configured: set `OPENAI_API_KEY` (or `OPENAI_BASE_URL` for a local "
                   "server) and `ACE_MODEL`. Sandbox runs and curation work without one.")


pg = st.navigation([st.Page(home, title="Home", icon="🏠", default=True)])
pg.run()
