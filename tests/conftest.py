"""Shared fixtures: a real SQLite file per test, settings from a clean environment."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import config
from core.storage import db

# Nothing a test does may reach a real model or cloud with real keys.
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY", "ACE_SERVICE_TOKEN", "ACE_MODEL"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _no_leftover_worker() -> Iterator[None]:
    """A worker thread started by one test (the app, the service) must not take the next test's jobs."""
    yield
    from core.jobs import queue as jobs

    jobs.stop_background_worker()


@pytest.fixture()
def fresh_retrieval() -> Iterator[None]:
    """No embedder, retrieval index or query expansion cached by an earlier test, none left for the next."""
    from core.retrieval import embeddings
    from core.retrieval import search as retrieval

    def reset() -> None:
        embeddings.reset_embedders()
        retrieval.clear_cache()
        retrieval._expansions.clear()

    reset()
    yield
    reset()


@pytest.fixture()
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'ace.db'}"
    monkeypatch.setenv("ACE_DB_URL", url)
    config.reset_settings()
    db.dispose_engines()
    yield url
    db.dispose_engines()
    config.reset_settings()


@pytest.fixture()
def settings_env(monkeypatch: pytest.MonkeyPatch):
    """Set environment variables for settings and re-read them."""

    def set_env(**values: str) -> config.Settings:
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        config.reset_settings()
        return config.get_settings()

    yield set_env
    config.reset_settings()


@pytest.fixture()
def fake_llm(monkeypatch: pytest.MonkeyPatch, db_url: str):
    """A running fake OpenAI-compatible server, with settings pointing at it."""
    from core.llm import client as llm
    from tests.fake_llm import FakeLLM

    fake = FakeLLM().start()
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-key-never-logged")
    monkeypatch.setenv("ACE_MODEL", "fake-model")
    monkeypatch.setenv("ACE_LLM_MAX_RETRIES", "2")
    monkeypatch.setenv("ACE_LLM_TIMEOUT", "5")
    config.reset_settings()
    llm.reset_mode_cache()
    yield fake
    fake.stop()
    llm.reset_mode_cache()
    config.reset_settings()
