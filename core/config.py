"""Settings from the environment and an optional `.env` file, in one place.

Every setting the project reads is a field of `Settings`, named after its
environment variable, with its default and a one-line description; the
README's settings table is generated from them (`python -m core.config`).
Parsing is strict: a value that does not parse is an error naming the
variable, never a silent default. An empty value means unset.

Secrets (API keys, the service token) live only here, in memory, as
`SecretStr`: nothing in this module writes them anywhere, repr() hides them,
`Settings.secret()` is how the code that needs one gets it, and
`Settings.public()` is what the UI, the trace and logs may show.
"""

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

SecretName = Literal["openai_api_key", "e2b_api_key", "service_token"]
SECRET_FIELDS: frozenset[str] = frozenset({"openai_api_key", "e2b_api_key", "service_token"})

# Set while settings are built from one given mapping only (tests, `with_`), so neither
# the real environment nor `.env` leaks in; a ContextVar keeps that per thread.
_only_mapping: ContextVar[Optional[Mapping[str, Any]]] = ContextVar("ace_settings_mapping", default=None)


class SettingsError(ValueError):
    """A setting that does not parse; the message names the variable."""


def _env(name: str, default: Any, description: str) -> Any:
    return Field(default, validation_alias=name, description=description)


class Settings(BaseSettings):
    """Everything configurable, each field read from the environment variable in its alias."""

    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env",
        case_sensitive=True,  # exact variable names, as os.environ has them
        env_ignore_empty=True,  # an empty value means unset
        extra="ignore",  # `.env` may hold variables for other tools
        frozen=True,
        protected_namespaces=(),
        validate_by_name=True,  # Settings(model=...) as well as Settings(ACE_MODEL=...)
    )

    openai_base_url: Optional[str] = _env(
        "OPENAI_BASE_URL", None, "base URL of an OpenAI-compatible endpoint (Ollama, vLLM, ...); unset: OpenAI")
    openai_api_key: Optional[SecretStr] = _env(
        "OPENAI_API_KEY", None, "API key of the model endpoint (any value for local servers)")
    model: str = _env("ACE_MODEL", "gpt-4o-mini", "model the roles call")
    embed_model: Optional[str] = _env(
        "ACE_EMBED_MODEL", None, "embedding model; unset: `text-embedding-3-small` (endpoint) or the bundled "
        "MiniLM (local); `all-mpnet-base-v2` for the larger local model, see below")
    embedder: Literal["none", "endpoint", "local"] = _env(
        "ACE_EMBEDDER", "none", "`none`, `endpoint` (the endpoint's `/v1/embeddings`) or `local`, the bundled MiniLM")
    db_url: str = _env("ACE_DB_URL", f"sqlite:///{DATA_DIR / 'ace.db'}",
                       "SQLAlchemy URL of the database: a SQLite file, or `postgresql://user:pw@host/db` for a team")
    db_pool_size: int = _env(
        "ACE_DB_POOL_SIZE", 3, "PostgreSQL connections each process keeps open (plus one listening for wake-ups)")
    db_max_overflow: int = _env(
        "ACE_DB_MAX_OVERFLOW", 4, "PostgreSQL connections a process may open beyond the pool when busy")
    sandbox_backend: Literal["local", "e2b"] = _env(
        "ACE_SANDBOX", "local", "`local` runs code under bubblewrap here, `e2b` in E2B's cloud and needs `E2B_API_KEY`")
    e2b_api_key: Optional[SecretStr] = _env("E2B_API_KEY", None, "API key for E2B's cloud sandbox")
    allow_unisolated: bool = _env(
        "ACE_ALLOW_UNISOLATED", False, "`1` allows running code with only rlimits where bubblewrap cannot run; "
        "`0` refuses")
    sandbox_timeout: float = _env("ACE_SANDBOX_TIMEOUT", 30.0, "wall clock per sandbox run, in seconds")
    sandbox_memory_mb: int = _env("ACE_SANDBOX_MEMORY_MB", 512, "memory per sandbox run, in MB")
    sandbox_forkserver: bool = _env(
        "ACE_SANDBOX_FORKSERVER", True, "`0` runs a fresh bubblewrap per python run instead of forking from a "
        "warm server")
    default_k: int = _env("ACE_DEFAULT_K", 20, "bullets retrieved into a prompt")
    prompt_token_budget: int = _env("ACE_PROMPT_TOKEN_BUDGET", 4000, "token budget of the bullets in a prompt")
    review_mode: Literal["auto", "manual"] = _env(
        "ACE_REVIEW_MODE", "auto", "`auto` applies deltas at once, `manual` waits for review")
    dedup_threshold: float = _env(
        "ACE_DEDUP_THRESHOLD", 0.85, "lexical similarity at which an ADD counts as a duplicate")
    max_iterations: int = _env("ACE_MAX_ITERATIONS", 3, "attempts per episode before giving up")
    llm_timeout: float = _env(
        "ACE_LLM_TIMEOUT", 120.0, "seconds one model call may take in all, its retries and a slow server included")
    llm_max_retries: int = _env(
        "ACE_LLM_MAX_RETRIES", 3, "retries of a model call after a 429 or a 5xx, within its deadline")
    episode_budget: float = _env(
        "ACE_EPISODE_BUDGET", 900.0, "seconds of model calls and runs one episode may take; past it, no new "
        "attempt starts and learning is skipped")
    max_tokens_generator: int = _env(
        "ACE_MAX_TOKENS_GENERATOR", 2048, "token cap of a Generator reply (and an Optimizer's rewrite)")
    max_tokens_reflector: int = _env("ACE_MAX_TOKENS_REFLECTOR", 1024, "token cap of a Reflector reply")
    max_tokens_curator: int = _env("ACE_MAX_TOKENS_CURATOR", 1024, "token cap of a Curator reply")
    max_tokens_reviewer: int = _env("ACE_MAX_TOKENS_REVIEWER", 768, "token cap of a Reviewer reply")
    max_tokens_expand: int = _env("ACE_MAX_TOKENS_EXPAND", 256, "token cap of a query-expansion reply")
    prompt_max_tokens: int = _env(
        "ACE_PROMPT_MAX_TOKENS", 6000, "largest prompt any role sends; its variable parts (playbook, attempts, "
        "feedback) are cut to fit")
    llm_mode_retry_hours: float = _env(
        "ACE_LLM_MODE_RETRY_HOURS", 24.0, "hours after which a stronger output mode an endpoint refused is "
        "tried again")
    service_token: Optional[SecretStr] = _env(
        "ACE_SERVICE_TOKEN", None, "bearer token the HTTP service requires; unset: no token needed")
    service_max_body_bytes: int = _env(
        "ACE_SERVICE_MAX_BODY", 1_000_000, "largest request body the HTTP service accepts, in bytes; "
        "playbook imports may be larger")
    worker_in_app: bool = _env("ACE_WORKER_IN_APP", True, "run queued jobs in a thread of the app and the service")
    service_cors_origins: str = _env(
        "ACE_SERVICE_CORS_ORIGINS", "", "comma-separated origins the HTTP service allows; empty: localhost and "
        "127.0.0.1 on 3000 and 8080")
    rank_weights: str = _env(
        "ACE_RANK_WEIGHTS", "", "retrieval weights, e.g. `semantic=1,lexical=0.5,counters=0.2,provenance=0.3`; "
        "empty: defaults")
    query_expansion: bool = _env(
        "ACE_QUERY_EXPANSION", False, "`1` asks the model for likely pitfalls to widen retrieval queries")
    semantic_dedup_threshold: float = _env(
        "ACE_SEMANTIC_DEDUP_THRESHOLD", 0.9, "cosine at which an ADD counts as a duplicate when embeddings are on")
    price_input: float = _env(
        "ACE_PRICE_INPUT", 0.0, "USD per million prompt tokens, for benchmark cost per task")
    price_output: float = _env(
        "ACE_PRICE_OUTPUT", 0.0, "USD per million completion tokens, for benchmark cost per task")
    job_stale_seconds: float = _env(
        "ACE_JOB_STALE_SECONDS", 30.0, "seconds without a heartbeat after which a running job counts as "
        "abandoned: requeued, or failed when out of attempts")
    suites_dir: Optional[Path] = _env(
        "ACE_SUITES_DIR", None, "where benchmark suites added by users are kept; unset: beside the SQLite file, "
        "or `data/user_suites`")
    routing_file: Path = _env(
        "ACE_ROUTING_FILE", DATA_DIR / "routing.json", "JSON routing rules, used when the file exists")
    model_cache: Optional[Path] = _env(
        "ACE_MODEL_CACHE", None, "where split local embedding models are unpacked; unset: "
        "`~/.cache/ace-playground/models`, or under `XDG_CACHE_HOME`")

    @field_validator("embedder", "sandbox_backend", "review_mode", mode="before")
    @classmethod
    def _choice(cls, value: Any) -> Any:
        """Choices were always case-insensitive (`ACE_SANDBOX=E2B`)."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("llm_timeout", "episode_budget", "max_tokens_generator", "max_tokens_reflector",
                     "max_tokens_curator", "max_tokens_reviewer", "max_tokens_expand", "prompt_max_tokens")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        """A cap or deadline of 0 or less would mean none at all (llama.cpp reads -1 as unlimited)."""
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("allow_unisolated", "sandbox_forkserver", "worker_in_app", "query_expansion", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        """Surrounding spaces were always allowed in flags; anything else unknown is an error."""
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The real environment wins over `.env`; with a given mapping, only that mapping counts."""
        only = _only_mapping.get()
        if only is not None:
            return init_settings, _MappingSource(settings_cls, only)
        return init_settings, env_settings, _UnsetInEnvironment(settings_cls, dotenv_settings)

    @property
    def llm_configured(self) -> bool:
        return self.openai_api_key is not None or bool(self.openai_base_url)

    def secret(self, name: SecretName) -> Optional[str]:
        """The plain value, for the one call that must send it (a client, a comparison)."""
        value: Optional[SecretStr] = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    @property
    def db_password(self) -> Optional[str]:
        """The password inside ACE_DB_URL (PostgreSQL), a secret like the keys: never shown or stored."""
        try:
            return urlsplit(self.db_url).password
        except ValueError:
            return None

    def public(self) -> dict[str, object]:
        """What may be shown: secrets replaced by whether they are set."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                out[name] = "set" if value is not None else "not set"
            elif name == "db_url" and self.db_password:
                out[name] = value.replace(f":{self.db_password}@", ":***@", 1)
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        return out

    def with_(self, **changes: object) -> "Settings":
        """A copy with some fields changed, validated like the environment is."""
        values = {env_var(name): value for name, value in {**dict(self), **changes}.items()}
        with _reading(values):
            return _build()


class _UnsetInEnvironment(PydanticBaseSettingsSource):
    """`.env` values only for variables the real environment does not have at all: an empty variable
    in the environment means unset (the default), as it always has, not "fall back to `.env`"."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.dotenv.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, value in self.dotenv().items() if name not in os.environ}


class _MappingSource(PydanticBaseSettingsSource):
    """Reads one given mapping of variable names, the way the environment is read."""

    def __init__(self, settings_cls: type[BaseSettings], mapping: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self.mapping = mapping

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = str(field.validation_alias)
        return self.mapping.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, name, _ = self.get_field_value(field, field_name)
            if value is not None and value != "":
                out[name] = value
        return out


@contextmanager
def _reading(mapping: Mapping[str, Any]) -> Iterator[None]:
    token = _only_mapping.set(mapping)
    try:
        yield
    finally:
        _only_mapping.reset(token)


def env_var(field_name: str) -> str:
    """The environment variable a setting is read from."""
    return str(Settings.model_fields[field_name].validation_alias)


def _build(env_file: Optional[Path] = None) -> Settings:
    try:
        return Settings(_env_file=env_file) if env_file is not None else Settings()
    except ValidationError as exc:
        secrets = SECRET_FIELDS | {env_var(name) for name in SECRET_FIELDS}
        problems = []
        for err in exc.errors(include_url=False):
            name = ".".join(str(part) for part in err["loc"])
            shown = "" if name in secrets else f" (got {err['input']!r})"
            problems.append(f"{name}: {err['msg']}{shown}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def load_settings(env: Optional[Mapping[str, str]] = None, env_file: Optional[Path] = None) -> Settings:
    """Read settings; the real environment wins over `.env`. Given `env`, only that mapping is read."""
    if env is not None:
        with _reading(env):
            return _build()
    return _build(env_file)


_cached: Optional[Settings] = None


def get_settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def reset_settings() -> None:
    """Forget cached settings (tests change the environment)."""
    global _cached
    _cached = None


def _shown_default(name: str, field: FieldInfo) -> str:
    value = field.default
    if name in SECRET_FIELDS or value is None or value == "":
        return ""
    if isinstance(value, bool):
        text = "1" if value else "0"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value).replace(f"{PROJECT_ROOT}/", "")  # machine paths shown relative to the project
    return f" (`{text}`)"


def settings_table() -> str:
    """The README's settings table, so the documentation cannot drift from the code."""
    rows = ["| setting | meaning (default) |", "| --- | --- |"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{env_var(name)}` | {field.description}{_shown_default(name, field)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_table())
