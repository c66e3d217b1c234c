"""The `llmcall` table: every request to a model, answered or not, with what it cost.

Inside a trace step the rows are buffered and committed with the step's event
(`deferred_call_log`), so a step's calls and its event land together.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from core.storage.db import write_session
from core.storage.models import LLMCall

_deferred = threading.local()


@contextmanager
def deferred_call_log() -> Iterator[list[LLMCall]]:
    """Collect this thread's call-log rows instead of writing each in its own transaction.

    The caller writes the yielded rows with its own commit; if the block
    raises, they are written here so failed calls are never lost.
    """
    rows: list[LLMCall] = []
    outer = getattr(_deferred, "rows", None)
    _deferred.rows = rows
    try:
        yield rows
    except BaseException:
        if rows:
            with write_session() as s:
                s.add_all(rows)
            rows.clear()
        raise
    finally:
        _deferred.rows = outer


def log_call(row: LLMCall) -> Optional[int]:
    """Store one call's row (or buffer it for the open step); its id when written at once."""
    buffer = getattr(_deferred, "rows", None)
    if buffer is not None:  # written by whoever opened the buffer, in its own transaction
        buffer.append(row)
        return None
    with write_session() as s:
        s.add(row)
        s.flush()
        return row.id
