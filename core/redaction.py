"""One redaction step for everything the project stores, prints or logs.

`redact(text)` replaces the configured secrets (OPENAI_API_KEY, E2B_API_KEY, ACE_SERVICE_TOKEN: their
exact values) and key-shaped text (`sk-...`, `Bearer ...`, `e2b_...`) with `[redacted]`; ordinary
bullets and code come back unchanged (the very same object). `scrub_for_storage(text)` also replaces
what a database cannot store: NUL (PostgreSQL refuses it) and lone surrogates (SQLite's UTF-8
encoding crashes on them) become U+FFFD, in plain text and in JSON text (`\\u0000`, `\\ud800`).

The sinks: the database (an engine hook and the raw write path, `core.storage.db`), the log
(`install_logging`: every record this process creates; uvicorn's access log also loses query
strings), the CLI (`core.cli.exits.fail`, the trace printer) and model errors (`core.llm.client`).
The UI and the service read the database, so they see what was stored.

Fast: a few substring checks decide most texts; the one alternation regex is built once per set of
configured secrets (settings are cached, so once per process in practice).
"""

import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, Optional

from core.config import SecretName, Settings, get_settings

REDACTED = "[redacted]"
REPLACEMENT = "\ufffd"
MIN_SECRET_CHARS = 8  # a shorter configured value ("test", "x") would redact ordinary words
_SECRET_NAMES: tuple[SecretName, ...] = ("openai_api_key", "e2b_api_key", "service_token")

# Key-shaped text. In JSON text a key may follow an escape (`\nsk-...`), hence the second look-behind;
# a bearer token stops at quotes and backslashes so JSON text stays JSON.
_SHAPES = (r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrtbf]))sk-[A-Za-z0-9_-]{20,}"
           r"|(?i:(bearer)[ \t]+)[^\s\"'\\]{16,}"
           r"|e2b_[A-Za-z0-9]{20,}")
# NUL and surrogates as JSON escapes them (json.dumps writes lowercase hex)
_JSON_ESCAPES = re.compile(r"\\u(?:0000|d[89a-f][0-9a-f]{2})", re.I)


class _Redactor:
    """The compiled pattern for one set of configured secrets."""

    def __init__(self, secrets: tuple[str, ...]):
        self.secrets = secrets
        forms: set[str] = set()
        for s in secrets:
            forms.add(s)
            forms.add(json.dumps(s)[1:-1])  # as it appears inside JSON text
        exact = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        self.pattern = re.compile(f"{exact}|{_SHAPES}" if exact else _SHAPES)
        self.needles = tuple(sorted(forms, key=len))

    def suspect(self, text: str) -> bool:
        """Whether `text` may hold something to redact (substring checks: far cheaper than the regex)."""
        if "sk-" in text or "e2b_" in text or "earer" in text:
            return True
        if any(n in text for n in self.needles):
            return True
        return len(text) >= 23 and "bearer" in text.lower()  # BEARER, bEaReR: 23 characters at least

    def sub(self, text: str) -> str:
        return self.pattern.sub(_replacement, text)


def _replacement(m: "re.Match[str]") -> str:
    return f"{m.group(1)} {REDACTED}" if m.group(1) else REDACTED


_lock = threading.Lock()
_reading = threading.local()
_state: tuple[Optional[Settings], _Redactor] = (None, _Redactor(()))


def configured_secrets(settings: Optional[Settings] = None) -> tuple[str, ...]:
    """The values of the configured secrets long enough to redact safely."""
    s = settings or get_settings()
    values = [s.secret(name) for name in _SECRET_NAMES] + [s.db_password]
    return tuple(sorted({v for v in values if v and len(v) >= MIN_SECRET_CHARS}))


def _redactor() -> _Redactor:
    """The redactor for the current settings, rebuilt only when the cached settings object changes."""
    global _state
    if getattr(_reading, "on", False):  # reading settings logged something: redact with what we have
        return _state[1]
    _reading.on = True
    try:
        settings = get_settings()
    except Exception:  # invalid settings must not stop a log line or an error message
        return _state[1]
    finally:
        _reading.on = False
    held, redactor = _state
    if held is settings:
        return redactor
    with _lock:
        secrets = configured_secrets(settings)
        if secrets != _state[1].secrets:
            redactor = _Redactor(secrets)
        else:
            redactor = _state[1]
        _state = (settings, redactor)
    return redactor


def redact(text: str, extra: Iterable[Optional[str]] = ()) -> str:
    """`text` with configured secrets, key-shaped text and any `extra` secret values replaced by
    `[redacted]`; `text` itself when there is nothing to replace."""
    if not text:
        return text
    r = _redactor()
    more = [e for e in extra if e and len(e) >= MIN_SECRET_CHARS and e not in r.secrets]
    if more:
        r = _Redactor(tuple(sorted({*r.secrets, *more})))
    return r.sub(text) if r.suspect(text) else text


# ------------------------------------------------------------------ storage


def _fix_surrogates(text: str) -> str:
    """Lone surrogates as U+FFFD (a pair of surrogate code points becomes the character they encode)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean(text: str) -> str:
    """NUL and lone surrogates replaced (plain text only)."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _fix_surrogates(text)
    return text


def sanitize(text: str) -> str:
    """`redact(text)` with NUL and lone surrogates replaced: text safe to print (a lone surrogate makes a
    UTF-8 terminal's `print` raise)."""
    return redact(_clean(text)) if text else text


def _clean_json(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        out = _clean(value)
        return out, out is not value
    if isinstance(value, list):
        items = [_clean_json(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(value, dict):
        changed = False
        cleaned = {}
        for k, v in value.items():
            k2, ck = _clean_json(k)
            v2, cv = _clean_json(v)
            cleaned[k2] = v2
            changed = changed or ck or cv
        return cleaned, changed
    return value, False


def _clean_json_text(text: str) -> str:
    """JSON text whose strings hold NUL or lone surrogates (escaped), with them replaced. Text that is
    not JSON (code that writes `\\u0000`) stays as it is: it holds no NUL."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    cleaned, changed = _clean_json(value)
    return json.dumps(cleaned) if changed else text  # json.dumps: SQLAlchemy's own JSON serializer


def needs_scrub(text: str, _r: Optional[_Redactor] = None) -> bool:
    """Whether `scrub_for_storage` may change `text` (cheap: substring checks, no regex on most texts)."""
    if "\x00" in text or "sk-" in text or "e2b_" in text or "earer" in text:
        return True
    for needle in (_r or _redactor()).needles:
        if needle in text:
            return True
    if "\\u" in text and _JSON_ESCAPES.search(text):
        return True
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
    # BEARER, bEaReR: a bearer token needs 23 characters at least
    return len(text) >= 23 and "bearer" in text.lower()


def scrub_for_storage(text: str) -> str:
    """`redact(text)` with NUL and lone surrogates (raw or JSON-escaped) replaced by U+FFFD: what a
    database may store. `text` itself when nothing changes."""
    if not needs_scrub(text):
        return text
    out = _clean(text)
    if "\\u" in out and _JSON_ESCAPES.search(out):
        out = _clean_json_text(out)
    out = redact(out)
    return text if out == text else out


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_for_storage(value)
    if isinstance(value, (tuple, list, dict)):
        return scrub_params(value)
    return value


def _any_needs(params: Any, r: _Redactor) -> bool:
    values = params.values() if isinstance(params, dict) else params
    for v in values:
        if isinstance(v, str):
            if needs_scrub(v, r):
                return True
        elif isinstance(v, (tuple, list, dict)) and _any_needs(v, r):
            return True
    return False


def scrub_params(params: Any) -> Any:
    """A statement's parameters (a tuple, list or dict, or a list of those for executemany) with every
    string scrubbed for storage; the very same object when no string needs it (the common case, decided
    without building anything)."""
    if not isinstance(params, (tuple, list, dict)) or not _any_needs(params, _redactor()):
        return params
    if isinstance(params, dict):
        return {k: _scrub_value(v) for k, v in params.items()}
    out = [_scrub_value(v) for v in params]
    return tuple(out) if isinstance(params, tuple) else out


# ------------------------------------------------------------------ logging


def _strip_query(path: Any) -> Any:
    return path.split("?", 1)[0] if isinstance(path, str) else path


def redact_record(record: logging.LogRecord) -> None:
    """Redact one log record in place: its message (args formatted in when they held a secret), its
    traceback and stack. uvicorn's access log records lose their query strings (`?token=...`)."""
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) >= 3:
        # (client, method, path with query, http version, status): keep the tuple its formatter unpacks
        record.args = args = tuple(redact(a) if isinstance(a, str) else a for a in
                                   (*args[:2], _strip_query(args[2]), *args[3:]))
    try:
        message = record.getMessage()
    except Exception:  # a broken log call: keep what it said, redacted, as the message
        record.msg, record.args = redact(f"{record.msg} {args!r}"), None
        message = record.msg
    cleaned = redact(message)
    if cleaned is not message and cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A filter for handlers (or a logger's own records): redacts, never drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed = False


def install_logging() -> None:
    """Redact every log record this process creates, whatever logger or handler it goes to (uvicorn's,
    Streamlit's, pytest's): the record factory is the one point every record passes. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                redact_record(record)
            except Exception:  # redaction must never lose a log line
                pass
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
