"""Which output mode each endpoint and model accepts, remembered in the database.

Servers differ: OpenAI honours `json_schema`, many local servers refuse it. The first refusal steps
down a mode (json_schema, json_object, plain) and the database keeps the mode that worked, so a new
process (every `ace run`) does not pay the refused requests again. Servers get upgraded, so after
`ACE_LLM_MODE_RETRY_HOURS` the strongest mode is tried once more.
"""

import logging
import threading
from datetime import timedelta
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from core.storage.db import read_session, write_session
from core.storage.models import LLMEndpointMode, utcnow

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("json_schema", "json_object", "plain")

# (endpoint, model) -> (mode, refused_at); read from the database once per process
_cache: dict[tuple[str, str], tuple[str, object]] = {}
_lock = threading.Lock()


def endpoint_key(base_url: Optional[str]) -> str:
    """The endpoint as stored: no credentials, no query string."""
    if not base_url:
        return "openai"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def current_mode(endpoint: str, model: str, retry_hours: float) -> str:
    """The mode to ask for: the remembered one, or the strongest once the memory is old enough."""
    key = (endpoint, model)
    with _lock:
        known = _cache.get(key)
    if known is None:
        try:
            with read_session() as s:
                row = s.get(LLMEndpointMode, key)
                known = (row.mode, row.refused_at) if row is not None else (MODES[0], None)
        except Exception as exc:  # the memory is an optimisation: never fail a call for it
            log.warning("could not read the remembered output mode: %s", exc)
            known = (MODES[0], None)
        with _lock:
            _cache[key] = known
    mode, refused_at = known
    if mode != MODES[0] and refused_at is not None and utcnow() - refused_at > timedelta(hours=retry_hours):  # type: ignore[operator]
        return MODES[0]
    return mode


def remember_refusal(endpoint: str, model: str, refused: str) -> Optional[str]:
    """The next weaker mode after `refused`, remembered; None when nothing weaker is left."""
    i = MODES.index(refused) + 1
    if i >= len(MODES):
        return None
    mode, now = MODES[i], utcnow()
    with _lock:
        _cache[(endpoint, model)] = (mode, now)
    try:
        with write_session() as s:
            row = s.get(LLMEndpointMode, (endpoint, model))
            if row is None:
                s.add(LLMEndpointMode(endpoint=endpoint, model=model, mode=mode, refused_at=now))
            else:
                row.mode, row.refused_at = mode, now
    except Exception as exc:
        log.warning("could not store the output mode %s for %s: %s", mode, endpoint, exc)
    return mode


def remember_success(endpoint: str, model: str, mode: str) -> None:
    """A stronger mode tried again after the wait worked: keep it."""
    with _lock:
        known = _cache.get((endpoint, model))
        if known is not None and known[0] == mode:
            return
        _cache[(endpoint, model)] = (mode, None)
    try:
        with write_session() as s:
            row = s.get(LLMEndpointMode, (endpoint, model))
            if row is not None:
                s.delete(row)  # the strongest mode works: nothing to remember
    except Exception as exc:
        log.warning("could not store the output mode %s for %s: %s", mode, endpoint, exc)


def forget() -> None:
    """Forget this process's memory (tests start servers on reused ports); the database keeps its own."""
    with _lock:
        _cache.clear()
