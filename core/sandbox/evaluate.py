"""Run a program against tests and return a verdict the Reflector can read.

Python assert-style tests are rewritten with `ast` so that every top-level
assert (and every assert directly in a HumanEval-style `check(candidate)`)
counts on its own: failures are collected and reported as one JSON line after
a marker, so a verdict says *which* tests failed, not just the first.
"""

import ast
import functools
import threading

from pydantic import BaseModel

from core.sandbox.base import Execution, OutputCallback, Sandbox

MARKER = "__ACE_TEST_REPORT__"
MAX_FEEDBACK = 3000

_PRELUDE = """
def __ace_fail(desc, exc):
    __ace_failed.append(desc + " -> " + type(exc).__name__ + (": " + str(exc) if str(exc) else ""))
__ace_failed = []
__ace_total = [0]
"""
_EPILOGUE = f"""
__ace_print = print
__ace_print("\\n{MARKER}" + repr({{"total": __ace_total[0], "failed": __ace_failed}}), flush=True)
"""  # repr, not json: importing json costs ~10 ms per run on a slow machine


class Verdict(BaseModel):
    passed: bool
    total: int = 0
    failed: list[str] = []
    error: str | None = None
    execution: Execution
    feedback: str = ""


def _wrap_assert(node: ast.Assert, desc: str) -> list[ast.stmt]:
    """`__ace_total[0] += 1; try: <assert> except Exception as __ace_exc: __ace_fail(desc, __ace_exc)`,
    built as nodes (parsing a template per assert cost more than the rest of the rewrite)."""
    count = ast.AugAssign(target=ast.Subscript(value=ast.Name("__ace_total", ast.Load()), slice=ast.Constant(0),
                                               ctx=ast.Store()), op=ast.Add(), value=ast.Constant(1))
    fail = ast.Expr(ast.Call(func=ast.Name("__ace_fail", ast.Load()),
                             args=[ast.Constant(desc), ast.Name("__ace_exc", ast.Load())], keywords=[]))
    handler = ast.ExceptHandler(type=ast.Name("Exception", ast.Load()), name="__ace_exc", body=[fail])
    return [count, ast.Try(body=[node], handlers=[handler], orelse=[], finalbody=[])]


class _Source:
    """Source segments by node position; the text is split and encoded once, not once per node
    (`ast.get_source_segment` re-splits the whole source every call)."""

    def __init__(self, text: str):
        self.lines = [line.encode() for line in text.splitlines(keepends=True)]

    def segment(self, node: ast.AST) -> str | None:
        try:
            first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]  # positioned nodes only
            start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        except AttributeError:
            return None
        if end is None or last >= len(self.lines):
            return None
        if first == last:
            return self.lines[first][start:end].decode(errors="replace")
        parts = [self.lines[first][start:], *self.lines[first + 1:last], self.lines[last][:end]]
        return b"".join(parts).decode(errors="replace")


def _describe(node: ast.Assert, source: _Source) -> str:
    return (source.segment(node) or "assert").strip().replace("\n", " ")[:200]


def _wrap_body(body: list[ast.stmt], source: _Source) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.Assert):
            out.extend(_wrap_assert(node, _describe(node, source)))
        else:
            if isinstance(node, ast.FunctionDef) and node.name == "check":
                node.body = _wrap_body(node.body, source)
            out.append(node)
    return out


# CPython 3.11's AST constructor keeps its recursion depth in interpreter-wide
# state, so an AST built while another thread builds one (here, or in any
# library) can fail with "AST constructor recursion depth mismatch". The lock
# keeps our own parses apart; the retry covers parses elsewhere in the process.
_AST_LOCK = threading.Lock()


@functools.lru_cache(maxsize=512)
def instrument_tests(tests: str, entry_point: str | None = None) -> str:
    """Rewrite Python tests so each assert is counted; append `check(entry_point)` if needed.

    Cached: a benchmark runs the same tests in every arm and epoch, and refinement once per attempt."""
    for attempt in range(5):
        try:
            with _AST_LOCK:
                return _instrument(tests, entry_point)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _instrument(tests: str, entry_point: str | None) -> str:
    tree = ast.parse(tests)
    calls_check = any(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Name) and n.value.func.id == "check"
        for n in tree.body
    )
    defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    tree.body = _wrap_body(tree.body, _Source(tests))
    if defines_check and not calls_check and entry_point:
        tree.body.append(ast.parse(f"check({entry_point})").body[0])
    return _PRELUDE + ast.unparse(tree) + "\n" + _EPILOGUE  # unparsed, never compiled: no locations needed


def _split_report(execution: Execution) -> dict | None:
    """Take the marker line out of stdout; return the report it carried."""
    report = None
    kept: list[str] = []
    for line in execution.logs.stdout:
        if line.startswith(MARKER):
            try:
                report = ast.literal_eval(line[len(MARKER):].strip())
            except (ValueError, SyntaxError):
                report = None
            if not isinstance(report, dict):
                report = None
        else:
            kept.append(line)
    if kept and kept[-1] == "\n" and report is not None:
        kept.pop()  # the newline written before the marker
    execution.logs.stdout = kept
    return report


def _error_text(execution: Execution) -> str | None:
    if execution.timed_out:
        return "timed out"
    if execution.error is not None:
        return f"{execution.error.name}: {execution.error.value}"
    return None


def evaluate(
    sandbox: Sandbox,
    code: str,
    language: str = "python",
    tests: str | None = None,
    expected_output: str | None = None,
    timeout: float | None = None,
    entry_point: str | None = None,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
) -> Verdict:
    """Run `code` (plus `tests`) once and judge it; never raises for the program's faults."""
    language = language.lower()
    if tests and language in ("python", "py"):
        try:
            program = code + "\n\n" + instrument_tests(tests, entry_point)
        except SyntaxError:
            program = code + "\n\n" + tests  # let the run report the syntax error
    elif tests:
        program = code + "\n\n" + tests
    else:
        program = code
    execution = sandbox.run(program, language, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr)
    report = _split_report(execution) if tests and language in ("python", "py") else None
    error = _error_text(execution)
    failed: list[str] = []
    total = 0
    if report is not None:
        failed = [str(f) for f in report.get("failed", [])]
        total = max(int(report.get("total", 0)), 1)  # asserts only in loops still make one check
    elif tests:
        total = 1
        if error is None and language in ("python", "py"):
            error = "the tests did not run to completion (exit before the end)"
        if error is not None:
            failed = ["tests: " + error]
    if expected_output is not None:
        total += 1
        if _norm(execution.stdout) != _norm(expected_output):
            failed.append("expected output differs")
    passed = error is None and not failed and (total > 0 or execution.ok)
    verdict = Verdict(passed=passed, total=total, failed=failed, error=error, execution=execution)
    verdict.feedback = feedback(verdict, expected_output)
    return verdict


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _tail(text: str, n: int = 800) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def feedback(verdict: Verdict, expected_output: str | None = None) -> str:
    """Compact, human-readable account of the run for the Reflector."""
    ex = verdict.execution
    head = "PASSED" if verdict.passed else "FAILED"
    lines = [f"{head}: {verdict.total - len(verdict.failed)}/{verdict.total} checks passed"
             + (" (timed out)" if ex.timed_out else "") + (" (output truncated)" if ex.truncated else "")]
    for f in verdict.failed[:20]:
        lines.append(f"- failed: {f}")
    if len(verdict.failed) > 20:
        lines.append(f"- ... and {len(verdict.failed) - 20} more")
    if ex.error is not None:
        lines.append(f"error: {ex.error.name}: {ex.error.value}")
        if ex.error.traceback:
            lines.append("traceback:\n" + _tail(ex.error.traceback))
    if expected_output is not None and "expected output differs" in verdict.failed:
        lines.append("expected stdout:\n" + _tail(expected_output.strip(), 500))
    if ex.stdout.strip():
        lines.append("stdout:\n" + _tail(ex.stdout.rstrip(), 600))
    if ex.stderr.strip() and (ex.error is None or ex.stderr.strip() != ex.error.traceback.strip()):
        lines.append("stderr:\n" + _tail(ex.stderr.rstrip(), 600))
    return "\n".join(lines)[:MAX_FEEDBACK]
