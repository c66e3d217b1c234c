"""Fuzz every operation in the OpenAPI schema: whatever comes in, never a 5xx."""

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from core import playbook as P
from core.config import load_settings
from core.service.app import create_app

# Default settings (no token), without reading the environment at import; the
# database comes from the db_url fixture at request time.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(start_worker=False, settings=load_settings(env={})))


@pytest.fixture(autouse=True)
def seeded(db_url: str) -> None:
    P.apply_delta("demo", [{"type": "ADD", "content": "Seed bullet about parsing dates"},
                           {"type": "ADD", "content": "Another bullet on retry budgets"}])


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_no_server_errors(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error])
