"""The ACE service over HTTP, and a client for agents that call it."""
