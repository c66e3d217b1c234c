"""The durable job queue; it knows only storage, and entry points register the handlers it runs."""
