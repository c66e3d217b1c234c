"""Learning: reflect and curate after a run, on the durable job queue, never in the request."""

from fastapi import APIRouter

from core import jobs
from core.errors import NotFound
from core.service.errors import responses
from core.service.mappers import learn_job_out
from core.service.params import JobId, PlaybookDep
from core.service.schemas import LearnIn, LearnJobEnvelope, LearnStarted
from core.storage.models import Job

router = APIRouter(prefix="/playbooks/{playbook_id}/episodes/learn", tags=["Learning"])


def learn_job(pid: str, job_id: str) -> Job:
    """The learn job of this playbook; any other job id is not found, so one playbook never sees another's."""
    job = jobs.get_job(job_id)
    if job is None or job.kind != "learn" or (job.payload or {}).get("playbook_id") != pid:
        raise NotFound("Learn job not found", loc=("path", "learn_job_id"))
    return job


@router.post("", response_model=LearnStarted)
def start_learn(pb: PlaybookDep, body: LearnIn) -> LearnStarted:
    """Queue reflect + curate for a finished run; answers at once with the job id."""
    payload = {"playbook_id": pb.id, **body.model_dump()}
    return LearnStarted(learn_job_id=jobs.enqueue("learn", payload))


@router.get("/{learn_job_id}", response_model=LearnJobEnvelope, responses=responses(404, e404="No such learn job"))
def get_learn_job(pb: PlaybookDep, learn_job_id: JobId) -> LearnJobEnvelope:
    return LearnJobEnvelope(learn_job=learn_job_out(learn_job(pb.id, learn_job_id)))


@router.post("/{learn_job_id}/retry", response_model=LearnJobEnvelope,
             responses=responses(404, 409, e404="No such learn job", e409="The job has not failed"))
def retry_learn_job(pb: PlaybookDep, learn_job_id: JobId) -> LearnJobEnvelope:
    """Queue a failed learn job again, e.g. once the model server is back."""
    learn_job(pb.id, learn_job_id)
    jobs.retry(learn_job_id)
    return LearnJobEnvelope(learn_job=learn_job_out(learn_job(pb.id, learn_job_id)))
