"""The playbook page tells the truth at once: after every action, on links that do not resolve, for large
playbooks. AppTest, on real SQLite files."""

import pytest

from core import playbook as P
from core.errors import plain_message
from core.playbook import portability
from tests.support import open_app

PAGE = "app_pages/playbook.py"


@pytest.fixture()
def stats(db_url: str) -> str:
    P.apply_delta("stats", [{"type": "ADD", "content": "Guard against empty lists before dividing"}])
    return "stats"


def warnings(at) -> list[str]:  # type: ignore[no-untyped-def]
    """The warnings' text as a person reads it (safe.warning escapes Markdown's characters)."""
    return [w.value.replace("\\", "") for w in at.warning]


def metric(at, label: str) -> str:  # type: ignore[no-untyped-def]
    return next(m.value for m in at.metric if m.label == label)


def test_adding_a_bullet_shows_the_new_version_at_once(stats: str) -> None:
    at = open_app(PAGE, playbook=stats, tab="Bullets")
    assert metric(at, "version") == "1"
    at.text_area(key="add_content").set_value("Prefer pathlib over os.path for new code")
    at.button(key="FormSubmitter:add_bullet-Add").click().run()
    assert not at.exception
    assert metric(at, "version") == "2" and metric(at, "active bullets") == "2"
    assert any("version 2" in t.value for t in at.toast)
    assert at.text_area(key="add_content").value == ""  # ready for the next one


def test_a_failed_add_keeps_the_text_and_says_what_is_wrong_in_plain_words(stats: str) -> None:
    at = open_app(PAGE, playbook=stats, tab="Bullets")
    at.text_area(key="add_content").set_value("   ")
    at.text_input(key="add_section").set_value("x" * 500)
    at.button(key="FormSubmitter:add_bullet-Add").click().run()
    errors = [e.value for e in at.error]
    assert errors and not any("pydantic" in e or "validation error for" in e for e in errors), errors
    assert at.text_input(key="add_section").value == "x" * 500  # nothing the user typed is lost
    assert metric(at, "version") == "1"


def test_plain_message_names_the_field() -> None:
    from pydantic import ValidationError

    from core.playbook.ops import OpIn

    with pytest.raises(ValidationError) as caught:
        OpIn.model_validate({"type": "ADD", "content": 5})
    msg = plain_message(caught.value)
    assert msg.startswith("content:") and "pydantic" not in msg and "https://" not in msg


def test_markdown_import_takes_plain_lists() -> None:
    fmt, items, _ = portability.parse("# Tips\n\n## Testing\n- Run the tests first\n* Keep them fast\n\n"
                                      "### Data\n1. Validate input at the edge\nprose is not a bullet\n")
    assert [(i.section, i.content) for i in items] == [("testing", "Run the tests first"),
                                                      ("testing", "Keep them fast"),
                                                      ("data", "Validate input at the edge")]


def test_remove_asks_first_and_says_how_to_undo(stats: str) -> None:
    at = open_app(PAGE, playbook=stats, bullet="b-00001")
    at.button(key="bremove-b-00001").click().run()
    assert P.get_bullet(stats, "b-00001").status == "active"  # nothing removed yet
    assert any("restore version 1" in w for w in warnings(at))
    at.button(key="bremove-yes-b-00001").click().run()
    assert P.get_bullet(stats, "b-00001").status == "removed"
    assert metric(at, "active bullets") == "0" and metric(at, "version") == "2"


def test_staged_decisions_land_as_one_version(stats: str) -> None:
    delta_id = P.propose_delta(stats, [{"type": "ADD", "content": "Log the inputs of a failing test"},
                                       {"type": "ADD", "content": "Pin dependency versions in CI"},
                                       {"type": "TAG", "bullet_id": "b-00001", "tag": "helpful"}])
    from core import views

    ops = views.delta_with_ops(delta_id).ops
    at = open_app(PAGE, playbook=stats)
    at.segmented_control(key=f"stage-{ops[0].oid}").set_value("✅ Approve").run()
    at.segmented_control(key=f"stage-{ops[1].oid}").set_value("❌ Reject").run()
    at.segmented_control(key=f"stage-{ops[2].oid}").set_value("✅ Approve").run()
    assert P.get_playbook(stats).current_version == 1  # staged only
    at.button(key=f"apply-{delta_id}").click().run()
    assert not at.exception
    assert P.get_playbook(stats).current_version == 2  # one version for the three decisions
    assert metric(at, "version") == "2" and metric(at, "pending deltas") == "0"


def test_links_that_do_not_resolve_say_so_and_change_nothing_else(stats: str) -> None:
    P.apply_delta("other", [{"type": "ADD", "content": "A bullet elsewhere"}])
    elsewhere = P.propose_delta("other", [{"type": "ADD", "content": "Pending in the other playbook"}])
    at = open_app(PAGE, playbook="nope")
    assert any("no playbook 'nope'" in w for w in warnings(at))
    assert at.query_params["playbook"] == "nope"  # the link is not rewritten behind the user's back
    at = open_app(PAGE, playbook=stats, diff="99..100")
    assert any("versions 0 to 1" in w for w in warnings(at))
    at = open_app(PAGE, playbook=stats, delta="d-bogus")
    assert any("no delta 'd-bogus'" in w for w in warnings(at))
    at = open_app(PAGE, playbook=stats, delta=elsewhere)
    assert any("belongs to playbook other" in w for w in warnings(at))


def test_benchmark_playbooks_are_hidden_and_the_last_used_comes_first(stats: str) -> None:
    from core.bench.runs import create_run

    create_run("python", epochs=1, split=0.5, limit=2, concurrency=1)  # its playbook is the run's id
    from core import views

    bench_pb = [p for p in views.playbook_ids(include_bench=True) if p.startswith("bench-")]
    P.get_or_create_playbook(bench_pb[0]) if bench_pb else None
    P.apply_delta("recent", [{"type": "ADD", "content": "The newest playbook"}])
    assert views.playbook_ids()[0] == "recent"
    assert not any(p.startswith("bench-") for p in views.playbook_ids())
    at = open_app(PAGE)
    assert at.selectbox(key="pb_select").value == "recent"


def test_only_the_open_tab_is_built(stats: str) -> None:
    """Tabs are lazy: reviewing a 5,000-bullet playbook does not build its bullets table."""
    at = open_app(PAGE, playbook=stats)
    assert not at.dataframe  # the Review tab has no table
    at = open_app(PAGE, playbook=stats, tab="Bullets")
    assert at.dataframe and at.query_params["tab"] == "Bullets"


def test_large_version_diffs_are_paged(stats: str) -> None:
    lines = "\n".join(f"- Strategy number {i} about topic {i * 7919 % 1000}" for i in range(250))
    portability.import_playbook(stats, lines.encode())
    at = open_app(PAGE, playbook=stats, diff="1..2")
    assert not at.exception
    assert at.number_input(key="diff_page").max == 3  # 250 added lines, 100 a page
