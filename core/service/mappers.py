"""Database rows as API bodies: the one place that knows both shapes."""

from core.playbook import versions
from core.service.schemas import BulletMetadata, BulletOut, DeltaOpOut, DeltaOut, LearnJobOut, PlaybookOut
from core.storage.models import Bullet, Delta, DeltaOp, Job, Playbook

# The queue's job states, in the reference service's words.
JOB_STATUS = {"queued": "pending", "running": "running", "done": "completed", "failed": "failed", "cancelled": "failed"}


def playbook_out(pb: Playbook) -> PlaybookOut:
    return PlaybookOut(id=pb.id, name=pb.name, description=pb.description, created_at=pb.created_at,
                       modified_at=pb.modified_at, environment=pb.environment, review_mode=pb.review_mode,
                       current_version=pb.current_version)


def bullet_out(b: Bullet) -> BulletOut:
    return BulletOut(id=b.id, playbook_id=b.playbook_id, content=b.content,
                     metadata=BulletMetadata(helpful_count=b.helpful, harmful_count=b.harmful,
                                             neutral_count=b.neutral),
                     created_at=b.created_at, modified_at=b.updated_at, section=b.section, status=b.status)


def learn_job_out(job: Job) -> LearnJobOut:
    result = job.result or {}
    error = job.error if job.status in ("failed", "cancelled") else None
    return LearnJobOut(id=job.id, playbook_id=str((job.payload or {}).get("playbook_id", "")),
                       status=JOB_STATUS.get(job.status, "failed"),
                       error=error, reflection=result.get("reflection"), curation=result.get("curation"),
                       episode_id=result.get("episode_id"), delta_id=result.get("delta_id"),
                       version=result.get("version"), delta_status=result.get("status"), attempts=job.attempts,
                       created_at=job.created_at, finished_at=job.finished_at)


def delta_out(d: Delta, ops: list[DeltaOp]) -> DeltaOut:
    return DeltaOut(id=d.id, playbook_id=d.playbook_id, episode_id=d.episode_id, reasoning=d.reasoning,
                    source=d.source, status=d.status, version=d.version, base_version=d.base_version,
                    created_at=d.created_at, decided_at=d.decided_at,
                    operations=[DeltaOpOut(id=o.oid or 0, seq=o.seq, type=o.type, section=o.section,
                                           content=o.content, bullet_id=o.bullet_id,
                                           bullet_ids=list(o.bullet_ids or []), tag=o.tag,
                                           justification=o.justification, evidence=o.evidence, before=o.before,
                                           decision=o.decision, decided_by=o.decided_by, decided_at=o.decided_at,
                                           note=o.note, result_bullet_id=o.result_bullet_id)
                                for o in sorted(ops, key=lambda o: o.seq)])


def state_out(st: versions.BulletState) -> versions.BulletState:
    """The identity: a bullet's state at a version serialises as it is (BulletStateOut)."""
    return st
