"""A small client for the ACE service, sync and async.

An agent needs two calls: `embed_prompt` before inference and `learn` after a
run. Errors are turned into a few exception types that say what went wrong
(service down, bad token, bad input) instead of raw HTTP failures.

    with ACEClient("http://127.0.0.1:8000") as ace:
        prompt = ace.embed_prompt("my-agent", "Sort a list of dicts by key")
        ...  # run the agent with `prompt`
        job = ace.learn("my-agent", user_message=prompt, trajectory=trace)
"""

import asyncio
import os
import time
from typing import Any, Optional
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 10.0
DONE = frozenset({"completed", "failed"})

__all__ = ["ACEClient", "AsyncACEClient", "ACEError", "ACEConnectionError", "ACETimeout", "ACEHTTPError",
           "LearnJobFailed"]


class ACEError(Exception):
    """Anything that went wrong talking to the ACE service."""


class ACEConnectionError(ACEError):
    """The service could not be reached (not running, wrong URL, network)."""


class ACETimeout(ACEError):
    """The service did not answer, or a learn job did not finish, in time."""


class ACEHTTPError(ACEError):
    """The service answered with an error status: `detail` is its explanation in words (the messages, joined
    by "; "), `errors` the service's list as sent (`[{"loc": [...], "msg": ..., "type": ...}]`)."""

    def __init__(self, status_code: int, detail: Any, method: str, url: str):
        self.status_code = status_code
        self.errors: list[Any] = detail if isinstance(detail, list) else []
        self.detail = "; ".join(str(e.get("msg")) if isinstance(e, dict) else str(e) for e in detail) \
            if isinstance(detail, list) else detail
        super().__init__(f"{method} {url} -> {status_code}: {_detail_text(detail)}")


class LearnJobFailed(ACEError):
    """A learn job ended failed; `job` holds the service's record (with `error`)."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        super().__init__(f"learn job {job.get('id')} failed: {job.get('error') or 'no error given'}")


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # the service's errors: name the fields
        return "; ".join((f"{'.'.join(str(x) for x in e.get('loc') or [])}: {e.get('msg')}" if e.get("loc")
                          else str(e.get("msg"))) if isinstance(e, dict) else str(e) for e in detail)
    return str(detail)


def _headers(token: Optional[str]) -> dict[str, str]:
    token = token if token is not None else os.environ.get("ACE_SERVICE_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _pb(playbook_id: str, *parts: str) -> str:
    return "/".join(["/playbooks", quote(playbook_id, safe=""), *(quote(p, safe="") for p in parts)])


def _learn_body(user_message: str, trajectory: str, ground_truth: Optional[str], evaluation: Optional[str],
                reflector_additional_instructions: Optional[str],
                curator_additional_instructions: Optional[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"user_message": user_message, "trajectory": trajectory}
    for k, v in (("ground_truth", ground_truth), ("evaluation", evaluation),
                 ("reflector_additional_instructions", reflector_additional_instructions),
                 ("curator_additional_instructions", curator_additional_instructions)):
        if v is not None:
            body[k] = v
    return body


def _result(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text[:500]
        raise ACEHTTPError(resp.status_code, detail, resp.request.method, str(resp.request.url))
    return resp.json()


def _wrap(exc: httpx.HTTPError, base_url: str) -> ACEError:
    if isinstance(exc, httpx.TimeoutException):
        return ACETimeout(f"the ACE service at {base_url} did not answer in time ({type(exc).__name__})")
    return ACEConnectionError(f"cannot reach the ACE service at {base_url}: {exc} (is `ace serve` running?)")


class ACEClient:
    """Blocking client; one connection pool, reuse it across calls."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, transport: Optional[httpx.BaseTransport] = None):
        self.base_url = (base_url or os.environ.get("ACE_SERVICE_URL") or DEFAULT_URL).rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=_headers(token),
                                  transport=transport)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return _result(self._http.request(method, path, **kw))
        except httpx.HTTPError as exc:
            raise _wrap(exc, self.base_url) from None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def embed_prompt(self, playbook_id: str, prompt: str, k: int = 20) -> str:
        """The prompt with the playbook's top-k bullets between the markers."""
        return self._call("POST", _pb(playbook_id, "embed_prompt"), json={"prompt": prompt, "k": k})["prompt"]

    def retrieve(self, playbook_id: str, user_message: str, k: int = 20) -> list[dict[str, Any]]:
        return self._call("POST", _pb(playbook_id, "bullets", "retrieve"),
                          json={"user_message": user_message, "k": k})["retrieved_bullets"]

    def learn(self, playbook_id: str, user_message: str, trajectory: str, ground_truth: Optional[str] = None,
              evaluation: Optional[str] = None, reflector_additional_instructions: Optional[str] = None,
              curator_additional_instructions: Optional[str] = None) -> str:
        """Submit a finished run; returns the learn job id at once (learning runs in the background)."""
        body = _learn_body(user_message, trajectory, ground_truth, evaluation, reflector_additional_instructions,
                           curator_additional_instructions)
        return self._call("POST", _pb(playbook_id, "episodes", "learn"), json=body)["learn_job_id"]

    def get_learn_job(self, playbook_id: str, job_id: str) -> dict[str, Any]:
        return self._call("GET", _pb(playbook_id, "episodes", "learn", job_id))["learn_job"]

    def retry_learn_job(self, playbook_id: str, job_id: str) -> dict[str, Any]:
        return self._call("POST", _pb(playbook_id, "episodes", "learn", job_id, "retry"))["learn_job"]

    def wait_for_learn(self, playbook_id: str, job_id: str, timeout: float = 300.0, poll: float = 0.5,
                       raise_on_failure: bool = True) -> dict[str, Any]:
        """Poll until the job completes or fails; agents need not wait, tests and scripts may."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_learn_job(playbook_id, job_id)
            if job["status"] in DONE:
                if job["status"] == "failed" and raise_on_failure:
                    raise LearnJobFailed(job)
                return job
            if time.monotonic() >= deadline:
                raise ACETimeout(f"learn job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ACEClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncACEClient:
    """The same calls for asyncio agents."""

    def __init__(self, base_url: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, transport: Optional[httpx.AsyncBaseTransport] = None):
        self.base_url = (base_url or os.environ.get("ACE_SERVICE_URL") or DEFAULT_URL).rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=_headers(token),
                                       transport=transport)

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return _result(await self._http.request(method, path, **kw))
        except httpx.HTTPError as exc:
            raise _wrap(exc, self.base_url) from None

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")

    async def embed_prompt(self, playbook_id: str, prompt: str, k: int = 20) -> str:
        return (await self._call("POST", _pb(playbook_id, "embed_prompt"), json={"prompt": prompt, "k": k}))["prompt"]

    async def retrieve(self, playbook_id: str, user_message: str, k: int = 20) -> list[dict[str, Any]]:
        return (await self._call("POST", _pb(playbook_id, "bullets", "retrieve"),
                                 json={"user_message": user_message, "k": k}))["retrieved_bullets"]

    async def learn(self, playbook_id: str, user_message: str, trajectory: str, ground_truth: Optional[str] = None,
                    evaluation: Optional[str] = None, reflector_additional_instructions: Optional[str] = None,
                    curator_additional_instructions: Optional[str] = None) -> str:
        body = _learn_body(user_message, trajectory, ground_truth, evaluation, reflector_additional_instructions,
                           curator_additional_instructions)
        return (await self._call("POST", _pb(playbook_id, "episodes", "learn"), json=body))["learn_job_id"]

    async def get_learn_job(self, playbook_id: str, job_id: str) -> dict[str, Any]:
        return (await self._call("GET", _pb(playbook_id, "episodes", "learn", job_id)))["learn_job"]

    async def retry_learn_job(self, playbook_id: str, job_id: str) -> dict[str, Any]:
        return (await self._call("POST", _pb(playbook_id, "episodes", "learn", job_id, "retry")))["learn_job"]

    async def wait_for_learn(self, playbook_id: str, job_id: str, timeout: float = 300.0, poll: float = 0.5,
                             raise_on_failure: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_learn_job(playbook_id, job_id)
            if job["status"] in DONE:
                if job["status"] == "failed" and raise_on_failure:
                    raise LearnJobFailed(job)
                return job
            if time.monotonic() >= deadline:
                raise ACETimeout(f"learn job {job_id} still {job['status']} after {timeout:g} s")
            await asyncio.sleep(poll)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncACEClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
