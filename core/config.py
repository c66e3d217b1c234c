"""Settings from the environment and an optional `.env` file.

Secrets (API keys, the service token) live only here, in memory: nothing in
this module writes them anywhere, and `Settings.public()` is what the UI, the
trace and logs may show.
"""

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

SECRET_FIELDS = frozenset({"openai_api_key", "e2b_api_key", "service_token"})


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


@dataclass(frozen=True)
class Settings:
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    model: str = "gpt-4o-mini"
    embed_model: str | None = None
    embedder: Literal["none", "endpoint", "local"] = "none"
    db_url: str = f"sqlite:///{DATA_DIR / 'ace.db'}"
    sandbox_backend: Literal["local", "e2b"] = "local"
    e2b_api_key: str | None = field(default=None, repr=False)
    allow_unisolated: bool = False
    sandbox_timeout: float = 30.0
    sandbox_memory_mb: int = 512
    sandbox_forkserver: bool = True  # python runs fork from a warm server inside the sandbox
    default_k: int = 20
    prompt_token_budget: int = 4000
    review_mode: Literal["auto", "manual"] = "auto"
    dedup_threshold: float = 0.85
    max_iterations: int = 3
    llm_timeout: float = 120.0
    llm_max_retries: int = 3
    service_token: str | None = field(default=None, repr=False)
    service_max_body_bytes: int = 1_000_000
    worker_in_app: bool = True
    service_cors_origins: str = ""  # comma-separated; empty: localhost and 127.0.0.1 on 3000 and 8080
    rank_weights: str = ""  # e.g. "semantic=1,lexical=0.5,counters=0.2,provenance=0.3"; empty: defaults
    query_expansion: bool = False  # ask the LLM for likely pitfalls to widen retrieval queries
    semantic_dedup_threshold: float = 0.9  # cosine at which an ADD is a near-duplicate
    price_input: float = 0.0  # USD per million prompt tokens, for benchmark cost per task
    price_output: float = 0.0  # USD per million completion tokens

    @property
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)

    def public(self) -> dict[str, object]:
        """What may be shown: secrets replaced by whether they are set."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("set" if value else "not set") if f.name in SECRET_FIELDS else value
        return out

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)


def load_settings(env: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Read settings; the real environment wins over `.env`."""
    merged: dict[str, str] = {}
    path = env_file if env_file is not None else PROJECT_ROOT / ".env"
    if env is None and path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    g = merged.get
    review = (g("ACE_REVIEW_MODE") or "auto").lower()
    if review not in ("auto", "manual"):
        raise ValueError(f"ACE_REVIEW_MODE must be auto or manual, got {review!r}")
    backend = (g("ACE_SANDBOX") or "local").lower()
    if backend not in ("local", "e2b"):
        raise ValueError(f"ACE_SANDBOX must be local or e2b, got {backend!r}")
    embedder = (g("ACE_EMBEDDER") or "none").lower()
    if embedder not in ("none", "endpoint", "local"):
        raise ValueError(f"ACE_EMBEDDER must be none, endpoint or local, got {embedder!r}")
    return Settings(
        openai_base_url=g("OPENAI_BASE_URL") or None,
        openai_api_key=g("OPENAI_API_KEY") or None,
        model=g("ACE_MODEL") or "gpt-4o-mini",
        embed_model=g("ACE_EMBED_MODEL") or None,
        embedder=embedder,  # type: ignore[arg-type]
        db_url=g("ACE_DB_URL") or f"sqlite:///{DATA_DIR / 'ace.db'}",
        sandbox_backend=backend,  # type: ignore[arg-type]
        e2b_api_key=g("E2B_API_KEY") or None,
        allow_unisolated=_bool(g("ACE_ALLOW_UNISOLATED")),
        sandbox_timeout=_float(g("ACE_SANDBOX_TIMEOUT"), 30.0),
        sandbox_memory_mb=_int(g("ACE_SANDBOX_MEMORY_MB"), 512),
        sandbox_forkserver=_bool(g("ACE_SANDBOX_FORKSERVER"), True),
        default_k=_int(g("ACE_DEFAULT_K"), 20),
        prompt_token_budget=_int(g("ACE_PROMPT_TOKEN_BUDGET"), 4000),
        review_mode=review,  # type: ignore[arg-type]
        dedup_threshold=_float(g("ACE_DEDUP_THRESHOLD"), 0.85),
        max_iterations=_int(g("ACE_MAX_ITERATIONS"), 3),
        llm_timeout=_float(g("ACE_LLM_TIMEOUT"), 120.0),
        llm_max_retries=_int(g("ACE_LLM_MAX_RETRIES"), 3),
        service_token=g("ACE_SERVICE_TOKEN") or None,
        service_max_body_bytes=_int(g("ACE_SERVICE_MAX_BODY"), 1_000_000),
        worker_in_app=_bool(g("ACE_WORKER_IN_APP"), True),
        service_cors_origins=g("ACE_SERVICE_CORS_ORIGINS") or "",
        rank_weights=g("ACE_RANK_WEIGHTS") or "",
        query_expansion=_bool(g("ACE_QUERY_EXPANSION")),
        semantic_dedup_threshold=_float(g("ACE_SEMANTIC_DEDUP_THRESHOLD"), 0.9),
        price_input=_float(g("ACE_PRICE_INPUT"), 0.0),
        price_output=_float(g("ACE_PRICE_OUTPUT"), 0.0),
    )


_cached: Settings | None = None


def get_settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def reset_settings() -> None:
    """Forget cached settings (tests change the environment)."""
    global _cached
    _cached = None
