"""The ACE service over HTTP, and a client for agents that call it.

`app` builds the FastAPI app (error kinds to status codes, the guard, the routers) and serves it;
`routes/` holds one module per router; `schemas` the bodies, `mappers` rows to bodies, `params` the
path parameters, `guard` auth and body limits. `client` is the agents' side and imports none of these.
"""
