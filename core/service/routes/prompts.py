"""Prompts: the one call an agent makes before inference, kept on the fast path."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from core import playbook as P
from core import retrieval
from core.service.params import PlaybookId
from core.service.schemas import EmbedIn, EmbedOut

router = APIRouter(prefix="/playbooks/{playbook_id}", tags=["Prompts"])


@router.post("/embed_prompt", response_model=EmbedOut)
async def embed_prompt(playbook_id: PlaybookId, body: EmbedIn) -> dict[str, str]:
    """The prompt with the top-k relevant bullets between **PLAYBOOK_BEGIN** and **PLAYBOOK_END**."""
    # The common case (the in-memory index is at the playbook's current version) takes well under a
    # millisecond of CPU: done here on the event loop it skips two thread hops and the GIL fights of
    # many threads. A refresh, a cold bullet, an embedder or k=0 (which may create the playbook) runs
    # in the thread pool as before.
    if body.k > 0:
        try:
            with retrieval.cached_only():
                return {"prompt": P.embed_prompt(playbook_id, body.prompt, body.k)}
        except retrieval.NotCached:
            pass
    return {"prompt": await run_in_threadpool(P.embed_prompt, playbook_id, body.prompt, body.k)}
