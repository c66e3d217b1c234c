"""Settings: one place, strict parsing, secrets hidden, and the README's table generated from them."""

import json
from pathlib import Path

import pytest

from core import config, jobs
from core.config import SettingsError, load_settings, settings_table
from core.playbook import routing

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> str:
    lines = README.read_text().splitlines()
    start = lines.index("| setting | meaning (default) |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == settings_table(), (
        "README.md's settings table differs from core/config.py: paste the output of "
        "`.venv/bin/python -m core.config` over it")


def test_every_setting_has_a_variable_and_a_description() -> None:
    names = [config.env_var(name) for name in config.Settings.model_fields]
    assert len(set(names)) == len(names)
    assert all(field.description for field in config.Settings.model_fields.values())
    for variable in ("ACE_SANDBOX", "ACE_SERVICE_MAX_BODY", "ACE_LLM_TIMEOUT", "ACE_LLM_MAX_RETRIES",
                     "ACE_JOB_STALE_SECONDS", "ACE_ROUTING_FILE", "ACE_MODEL_CACHE", "E2B_API_KEY"):
        assert f"| `{variable}` |" in settings_table()


def test_defaults_without_any_environment() -> None:
    s = load_settings(env={})
    assert (s.model, s.sandbox_backend, s.review_mode, s.embedder) == ("gpt-4o-mini", "local", "auto", "none")
    assert (s.sandbox_timeout, s.sandbox_memory_mb, s.job_stale_seconds) == (30.0, 512, 30.0)
    assert s.sandbox_forkserver and s.worker_in_app and not s.allow_unisolated
    assert s.openai_api_key is None and not s.llm_configured
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("data/ace.db")


def test_values_are_parsed_and_an_empty_value_means_unset() -> None:
    s = load_settings(env={"ACE_SANDBOX": "E2B", "ACE_REVIEW_MODE": " Manual ", "ACE_ALLOW_UNISOLATED": " yes ",
                           "ACE_SANDBOX_FORKSERVER": "0", "ACE_SANDBOX_MEMORY_MB": "256", "ACE_LLM_TIMEOUT": "2.5",
                           "ACE_SERVICE_MAX_BODY": "10", "ACE_MODEL": "", "ACE_DEFAULT_K": "", "OPENAI_BASE_URL": ""})
    assert (s.sandbox_backend, s.review_mode) == ("e2b", "manual")
    assert s.allow_unisolated and not s.sandbox_forkserver
    assert (s.sandbox_memory_mb, s.llm_timeout, s.service_max_body_bytes) == (256, 2.5, 10)
    assert (s.model, s.default_k, s.openai_base_url) == ("gpt-4o-mini", 20, None)


@pytest.mark.parametrize(("variable", "value"), [
    ("ACE_ALLOW_UNISOLATED", "ture"),
    ("ACE_WORKER_IN_APP", "maybe"),
    ("ACE_SANDBOX_MEMORY_MB", "lots"),
    ("ACE_SANDBOX_MEMORY_MB", "1.5"),
    ("ACE_SANDBOX_TIMEOUT", "soon"),
    ("ACE_JOB_STALE_SECONDS", "30s"),
    ("ACE_SANDBOX", "docker"),
    ("ACE_REVIEW_MODE", "later"),
    ("ACE_EMBEDDER", "openai"),
])
def test_a_value_that_does_not_parse_is_an_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        load_settings(env={variable: value})
    assert repr(value) in str(caught.value)
    assert isinstance(caught.value, ValueError)  # what callers caught before


def test_with_checks_its_changes_too() -> None:
    s = load_settings(env={})
    assert s.with_(embedder="local", embed_model="m").embedder == "local"
    with pytest.raises(SettingsError, match="ACE_SANDBOX"):
        s.with_(sandbox_backend="docker")


def test_secrets_are_hidden_but_reachable() -> None:
    s = load_settings(env={"OPENAI_API_KEY": "sk-very-secret", "E2B_API_KEY": "e2b-very-secret",
                           "ACE_SERVICE_TOKEN": "token-very-secret"})
    for shown in (repr(s), str(s), json.dumps(s.public()), s.model_dump_json()):
        assert "very-secret" not in shown
    assert {k: s.public()[k] for k in config.SECRET_FIELDS} == dict.fromkeys(config.SECRET_FIELDS, "set")
    assert load_settings(env={}).public()["service_token"] == "not set"
    assert s.secret("openai_api_key") == "sk-very-secret"
    assert s.secret("e2b_api_key") == "e2b-very-secret"
    assert s.secret("service_token") == "token-very-secret"
    assert s.llm_configured
    copy = s.with_(model="other")
    assert copy.secret("openai_api_key") == "sk-very-secret" and "very-secret" not in repr(copy)
    assert "very-secret" not in settings_table()


def test_a_bad_secret_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"OPENAI_API_KEY": "sk-very-secret", "ACE_DEFAULT_K": "many"})
    assert "very-secret" not in str(caught.value)


def test_the_environment_wins_over_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ACE_MODEL=from-file\nACE_DEFAULT_K=7\nACE_MAX_ITERATIONS=\nOTHER_TOOL=x\n")
    monkeypatch.setenv("ACE_MODEL", "from-env")
    monkeypatch.setenv("ACE_MAX_ITERATIONS", "")
    s = load_settings(env_file=env_file)
    assert (s.model, s.default_k, s.max_iterations) == ("from-env", 7, 3)
    monkeypatch.setenv("model", "lowercase-is-not-the-variable")
    assert load_settings(env_file=env_file).model == "from-env"


def test_an_empty_variable_in_the_environment_means_unset_even_when_the_env_file_sets_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ACE_SERVICE_TOKEN=from-file\nACE_DEFAULT_K=7\nACE_MODEL=from-file\n")
    monkeypatch.setenv("ACE_SERVICE_TOKEN", "")  # `ACE_SERVICE_TOKEN= ace serve` turns auth off, as it always did
    monkeypatch.setenv("ACE_DEFAULT_K", "")
    s = load_settings(env_file=env_file)
    assert (s.secret("service_token"), s.default_k, s.model) == (None, 20, "from-file")


def test_settings_take_field_names_as_well_as_variable_names() -> None:
    assert (config.Settings(model="m", default_k=5).model, config.Settings(ACE_DEFAULT_K=6).default_k) == ("m", 6)


def test_a_given_mapping_is_all_that_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ACE_DEFAULT_K=7\n")
    monkeypatch.setenv("ACE_MODEL", "from-env")
    s = load_settings(env={"ACE_MAX_ITERATIONS": "5"}, env_file=env_file)
    assert (s.model, s.default_k, s.max_iterations) == ("gpt-4o-mini", 20, 5)


def test_a_bad_value_in_the_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ACE_QUERY_EXPANSION=ture\n")
    with pytest.raises(SettingsError, match="ACE_QUERY_EXPANSION"):
        load_settings(env_file=env_file)


def test_the_stale_job_threshold_is_a_setting(db_url: str, settings_env) -> None:
    job_id = jobs.enqueue("episode", {"episode_id": None, "spec": {}}, max_attempts=1)
    assert jobs.claim("w1").id == job_id
    settings_env(ACE_JOB_STALE_SECONDS="3600")
    assert jobs.recover_stale() == []
    settings_env(ACE_JOB_STALE_SECONDS="0")
    assert jobs.recover_stale() == [job_id]


def test_the_routing_file_is_a_setting(tmp_path: Path, settings_env) -> None:
    rules = tmp_path / "routing.json"
    rules.write_text(json.dumps([{"environment": "sql", "pattern": "select"}]))
    settings_env(ACE_ROUTING_FILE=str(rules))
    assert [r.environment for r in routing.load_rules()] == ["sql"]
    settings_env(ACE_ROUTING_FILE=str(tmp_path / "missing.json"))
    assert routing.load_rules() == routing.DEFAULT_RULES
