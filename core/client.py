"""The client for the ACE service, where earlier READMEs pointed agents; it lives in `core.service.client`."""

from core.service.client import (
    ACEClient,
    ACEConnectionError,
    ACEError,
    ACEHTTPError,
    ACETimeout,
    AsyncACEClient,
    LearnJobFailed,
)

__all__ = ["ACEClient", "AsyncACEClient", "ACEError", "ACEConnectionError", "ACETimeout", "ACEHTTPError",
           "LearnJobFailed"]
