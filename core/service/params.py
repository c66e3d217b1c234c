"""Path parameters, and the playbook every route under /playbooks/{playbook_id} resolves first.

Every id has a fixed pattern, so a path like `../../x` or an id holding markup is refused (422) or finds
no route (404) before any code looks it up.
"""

from typing import Annotated

from fastapi import Depends, Path

from core import playbook as P
from core.playbook.ops import ID_PATTERN
from core.storage.models import Playbook

ID_TEXT = "1-64 letters, digits, '_', '-' or '.'"
PlaybookId = Annotated[str, Path(pattern=P.PLAYBOOK_ID_RE.pattern, description=(
    f"{ID_TEXT}, starting with a letter or digit; created on first use"))]
BulletId = Annotated[str, Path(pattern=ID_PATTERN, description=ID_TEXT)]
JobId = Annotated[str, Path(pattern=ID_PATTERN, description=ID_TEXT)]
DeltaId = Annotated[str, Path(pattern=ID_PATTERN, description=ID_TEXT)]
VersionNo = Annotated[int, Path(ge=0, le=2**31)]
OpId = Annotated[int, Path(ge=1, le=2**53 - 1)]


def playbook_dep(playbook_id: PlaybookId) -> Playbook:
    """Every route under /playbooks/{id} creates a missing playbook, as the reference does."""
    return P.get_or_create_playbook(playbook_id)


PlaybookDep = Annotated[Playbook, Depends(playbook_dep)]
