"""The model client: structured output, retries and the call log."""
