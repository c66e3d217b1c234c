"""What only PostgreSQL needs from the engine: pool sizing and reconnects, and scrubbing the JSON values
psycopg receives as objects rather than text."""

from typing import Any

from core.config import get_settings
from core.redaction import scrub_params


def engine_options() -> dict[str, object]:
    """Pool and connection options for PostgreSQL.

    A process holds at most pool + overflow connections, plus one for LISTEN (`core.storage.wakeups`):
    with the defaults (3 + 4 + 1) eight workers, two services and the app stay within PostgreSQL's default
    100. `pool_pre_ping` tests a connection before use, so after the server restarts a process reconnects
    instead of failing its next statement."""
    s = get_settings()
    return {
        "pool_size": s.db_pool_size,
        "max_overflow": s.db_max_overflow,
        "pool_pre_ping": True,
        "pool_timeout": 30,
        "connect_args": {"application_name": "ace-playground", "connect_timeout": 10},
    }


def scrub_json_objects(parameters: Any) -> Any:
    """psycopg receives JSON columns as `Json(obj)` wrappers, not text: scrub the objects they carry."""
    from psycopg.types.json import Json

    def one(v: Any) -> Any:
        return Json(scrub_params({"v": v.obj})["v"], dumps=v.dumps) if isinstance(v, Json) else v

    if isinstance(parameters, dict):
        return {k: one(v) for k, v in parameters.items()}
    if isinstance(parameters, (list, tuple)):
        return type(parameters)(scrub_json_objects(p) if isinstance(p, (dict, list, tuple)) else one(p)
                                for p in parameters)
    return parameters
