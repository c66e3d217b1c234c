"""The ACE service over HTTP, and a client for agents that call it.

`app` builds the FastAPI app (error kinds to status codes, the guard, the routers) and serves it;
`routes/` holds one module per router; `schemas` the bodies, `mappers` rows to bodies, `params` the
path parameters, `guard` auth and body limits. `client` is the agents' side and imports none of these.

`from core.service import create_app, serve` loads the app only when asked, so importing the client
stays light: an agent's process needs neither FastAPI nor the rest of core.
"""

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from core.service import app

        return getattr(app, name)
    raise AttributeError(f"module 'core.service' has no attribute {name!r}")
