"""A learn request's free-text evaluation: does it say the run passed? Counts are read as counts."""

import pytest

from core.episodes.learning import _looks_passed

CASES = [
    # counted zero failures pass
    ("all 12 tests passed, 0 failed", True),
    ("12 passed", True),
    ("0 failed", True),
    ("failed: 0", True),
    ("no failures", True),
    ("no tests failed", True),
    ("none failed", True),
    ("zero errors", True),
    ("errors=0, passed=4", True),
    ("All good, no errors", True),
    ("error-free run, all tests pass", True),
    ("didn't fail", True),
    ("0 of 3 failed", True),
    ("12 tests passed in 0.5s, 0 failed, 1 skipped", True),
    ("12 passed in 0.31s", True),
    ("Ran 12 tests in 0.001s\n\nOK", True),
    ("PASSED 1/1", True),
    ("5/5 tests passed", True),
    ("5 of 5 passed", True),
    ("Tests passed.", True),
    ("The run was successful", True),
    ("correct", True),
    # any failure that is counted or stated fails
    ("1 test failed", False),
    ("1 error", False),
    ("failures: 3", False),
    ("FAILED (failures=1)", False),
    ("===== 12 passed, 1 failed in 0.3s =====", False),
    ("0 errors 2 failures", False),
    ("FAILED 0/1", False),
    ("3/5 tests passed", False),
    ("2 out of 4 failed", False),
    ("the test failed", False),
    ("AssertionError: expected 3, got 4", False),
    ("error", False),
    ("did not pass", False),
    ("not ok 1 - adds", False),
    ("incorrect output", False),
    ("wrong answer", False),
    # nothing to go on
    ("looks fine", None),
    ("0 passed, 0 failed", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "verdict"), CASES, ids=[repr(t)[:40] for t, _ in CASES])
def test_looks_passed(text: str | None, verdict: bool | None) -> None:
    assert _looks_passed(text) is verdict
