"""The HTTP routes, one module per router (and per OpenAPI tag); `core.service.app` includes them in order."""
