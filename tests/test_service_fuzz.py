"""Fuzz every operation in the OpenAPI schema with all of schemathesis' checks: any finding fails.

Not only "never a 5xx": responses must match the documented status codes, schemas, content types and
headers, what breaks the schema must be refused, `Allow` must list the path's methods, and (stateful)
a deleted bullet must be gone. The only check turned off, and why, is in the committed
`schemathesis.toml`; `test_only_the_documented_exceptions_are_configured` keeps it that way.
"""

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from core import playbook as P
from core.config import load_settings
from core.service.app import create_app

CONFIG_FILE = Path(__file__).resolve().parent.parent / "schemathesis.toml"
CONFIG = SchemathesisConfig.from_path(CONFIG_FILE)
# Default settings (no token), without reading the environment at import; the database comes from the
# db_url fixture at request time.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(start_worker=False, settings=load_settings(env={})),
                                        config=CONFIG)
BOUNDED = settings(max_examples=10, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def seeded(db_url: str) -> None:
    _seed()


@schema.parametrize()
@BOUNDED
def test_every_operation_passes_every_check(case: Any) -> None:
    case.call_and_validate()  # every check the configuration enables, which is all but the one it explains


def _seed() -> None:
    P.apply_delta("demo", [{"type": "ADD", "content": "Seed bullet about parsing dates"},
                           {"type": "ADD", "content": "Another bullet on retry budgets"}])


def test_sequences_of_calls_pass_every_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stateful: schemathesis chains calls through the links it infers (create a bullet, then read,
    change or delete it), so use-after-free and resource-availability checks run too. Each scenario
    starts from its own freshly seeded database, so hypothesis can replay one exactly."""
    from core import config, retrieval
    from core.storage import db

    runs = iter(range(1_000_000))

    class FromAFreshDatabase(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            monkeypatch.setenv("ACE_DB_URL", f"sqlite:///{tmp_path / f'scenario-{next(runs)}.db'}")
            config.reset_settings()
            db.dispose_engines()
            retrieval.clear_cache()
            _seed()

    FromAFreshDatabase.run(settings=settings(BOUNDED, max_examples=40, stateful_step_count=8))
    db.dispose_engines()


TOKEN = "fuzz-token-0123456789"
guarded = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(start_worker=False, settings=load_settings(env={"ACE_SERVICE_TOKEN": TOKEN})),
    config=CONFIG)


@guarded.include(method="GET").parametrize()
@settings(BOUNDED, max_examples=3)
def test_with_a_token_every_check_holds_and_no_operation_ignores_it(case: Any) -> None:
    """The document declares the bearer scheme when a token is set, so `ignored_auth` runs: each call is
    also made without the token (and with a wrong one) and must be refused with 401."""
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


def test_only_the_documented_exceptions_are_configured() -> None:
    checks = CONFIG.projects.default.checks
    off = sorted(name for name in ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                                   "response_schema_conformance", "response_headers_conformance",
                                   "positive_data_acceptance", "negative_data_rejection", "use_after_free",
                                   "ensure_resource_availability", "missing_required_header", "ignored_auth",
                                   "unsupported_method", "allow_header_conformance")
                 if not getattr(checks, name).enabled)
    assert off == ["positive_data_acceptance"]
    assert "# " in CONFIG_FILE.read_text() and "rightly disagrees" in CONFIG_FILE.read_text()
