"""Playbook versions (`core.playbook.versions`), where the README finds them: `from core import versions`."""

from core.playbook.versions import (
    BulletState,
    VersionDiff,
    diff_versions,
    get_version,
    list_versions,
    restore_version,
    state_at,
)

__all__ = ["BulletState", "VersionDiff", "diff_versions", "get_version", "list_versions", "restore_version",
           "state_at"]
