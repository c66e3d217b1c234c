"""Shared fixtures: a real SQLite file per test, settings from a clean environment, the real local
sandbox, the service app. Plain helpers (wait_for, free_port) are in tests/support.py."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core import config
from core.storage import db

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from core.sandbox.local import LocalSandbox
    from tests.pg_server import ThrowawayPostgres

# Nothing a test does may reach a real model or cloud with real keys.
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY", "ACE_SERVICE_TOKEN", "ACE_MODEL"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True, scope="session")
def _job_handlers() -> None:
    """Tests run jobs as every entry point does: with each job kind's handler registered first."""
    from core import worker

    worker.register_handlers()


@pytest.fixture(autouse=True)
def _no_leftover_worker() -> Iterator[None]:
    """A worker thread started by one test (the app, the service) must not take the next test's jobs."""
    yield
    from core import jobs

    jobs.stop_background_worker()


@pytest.fixture()
def fresh_retrieval() -> Iterator[None]:
    """No embedder, retrieval index or query expansion cached by an earlier test, none left for the next."""
    from core import retrieval
    from core.retrieval import embeddings, expansion

    def reset() -> None:
        embeddings.reset_embedders()
        retrieval.clear_cache()
        expansion.clear_expansions()

    reset()
    yield
    reset()


# ------------------------------------------------------------------ the database

DATABASES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--db", choices=DATABASES, default="sqlite",
                     help="the database every test's `db_url` uses (tests marked both_dbs run on both "
                          "unless this is postgresql)")


@pytest.fixture(scope="session")
def pg_server() -> "Iterator[ThrowawayPostgres]":
    """One throwaway PostgreSQL for the session, started on first use; each test gets its own database."""
    from tests.pg_server import ThrowawayPostgres

    server = ThrowawayPostgres().start()
    try:
        yield server
    finally:
        server.stop()


def database_of(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", None) or request.config.getoption("--db")


@pytest.fixture()
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database at the head revision: a SQLite file in tmp_path, or a new PostgreSQL database."""
    kind = database_of(request)
    pg: ThrowawayPostgres | None = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    url = pg.new_database() if pg is not None else f"sqlite:///{tmp_path / 'ace.db'}"
    monkeypatch.setenv("ACE_DB_URL", url)
    monkeypatch.setenv("ACE_SUITES_DIR", str(tmp_path / "user_suites"))  # never the checkout's data/
    config.reset_settings()
    db.dispose_engines()
    yield url
    db.dispose_engines()
    config.reset_settings()
    if pg is not None:
        pg.drop_database(url)


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
def fake_llm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, db_url: str):
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
    try:
        if not request.node.get_closest_marker("uncapped_ok"):
            fake.assert_all_capped()  # no request may leave without a token cap
    finally:
        fake.stop()
        llm.reset_mode_cache()
        config.reset_settings()


@pytest.fixture()
def client(db_url: str) -> "Iterator[TestClient]":
    """The service app through FastAPI's TestClient, on a fresh database, with no worker thread."""
    from fastapi.testclient import TestClient

    from core.service.app import create_app

    with TestClient(create_app(start_worker=False)) as c:
        yield c


# ------------------------------------------------------------------ the local sandbox

SANDBOX_MODES = ("fresh", "forkserver")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes `sb` runs once per sandbox mode: "fresh" starts a new bubblewrap sandbox
    for each run, "forkserver" forks each run from a long-lived one. A module that is about one mode
    names it: `SANDBOX_MODES = ("forkserver",)`."""
    if "db_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_dbs"):
        only_pg = metafunc.config.getoption("--db") == "postgresql"
        metafunc.parametrize("db_url", ("postgresql",) if only_pg else DATABASES, indirect=True)
    if "sb" in metafunc.fixturenames:
        modes = getattr(metafunc.module, "SANDBOX_MODES", SANDBOX_MODES)
        metafunc.parametrize("sb", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def sb(request: pytest.FixtureRequest) -> "LocalSandbox":
    """The local sandbox with full isolation (never a fallback), in the mode given by `request.param`."""
    from core.config import load_settings
    from core.sandbox.local import LocalSandbox

    mode = request.param
    assert mode in SANDBOX_MODES, mode
    box = LocalSandbox(load_settings(env={}), reuse=mode == "forkserver")
    assert box.isolation.startswith("bubblewrap"), box.isolation  # full isolation, not a fallback
    assert box.reuse == (mode == "forkserver") and (("fork server" in box.isolation) == box.reuse), box.isolation
    return box
