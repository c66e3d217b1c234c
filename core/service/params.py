"""Path parameters, and the playbook every route under /playbooks/{playbook_id} resolves first."""

from typing import Annotated

from fastapi import Depends, Path

from core import playbook as P
from core.storage.models import Playbook

PlaybookId = Annotated[str, Path(pattern=P.PLAYBOOK_ID_RE.pattern, description=(
    "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit; created on first use"))]
BulletId = Annotated[str, Path(max_length=64)]
JobId = Annotated[str, Path(max_length=64)]
DeltaId = Annotated[str, Path(max_length=64)]
VersionNo = Annotated[int, Path(ge=0, le=2**31)]


def playbook_dep(playbook_id: PlaybookId) -> Playbook:
    """Every route under /playbooks/{id} creates a missing playbook, as the reference does."""
    return P.get_or_create_playbook(playbook_id)


PlaybookDep = Annotated[Playbook, Depends(playbook_dep)]
