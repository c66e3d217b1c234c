"""Every call visible: an episode's model calls on its trace page, and the learning outcome (skipped learning,
dropped ops, invented ids, unusable replies) on the trace, reflection and review pages, all model text as text.

The rows are written by hand into a real SQLite database, as the loop and the model client write them."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core import playbook as P
from core import views
from core.storage.db import write_session
from core.storage.models import Delta, DeltaOp, Episode, Event, LLMCall, Reflection
from tests.support import open_app

APP = str(Path(__file__).resolve().parent.parent / "app.py")
# markdown image (would fetch), HTML link, LaTeX, a colour directive and an emoji shortcode: shown literally
HOSTILE = '![x](http://host/p.png) <a href="http://evil.example">click</a> $x$ :red[x] :smile: **bold**'
SKIP_REASON = "the Reflector's reply was unusable: truncated at 1024 tokens"
TEXT_TYPES = {"text", "code"}


app = open_app


def rendered(at: AppTest) -> list[tuple[str, str]]:
    """(type, what it shows) of every node on the page: element bodies, expander and widget labels, and the
    raw proto of anything else (html, page links, json, tables)."""
    out = []
    for node in at:
        t = getattr(node, "type", "")
        if t in TEXT_TYPES or t in ("markdown", "caption", "error", "warning", "info", "success", "subheader",
                                    "header", "title"):
            out.append((t, str(node.value)))
        elif hasattr(node, "label"):
            out.append((t, str(node.label)))
        elif getattr(node, "proto", None) is not None:
            out.append((t, str(node.proto)))
    return out


def shown_as_text_only(at: AppTest, needle: str) -> None:
    """`needle` is on the page in a text or code element, and in no element that renders markdown or HTML."""
    nodes = rendered(at)
    assert any(needle in v for t, v in nodes if t in TEXT_TYPES), f"{needle!r} is not shown as text"
    leaks = [(t, v[:200]) for t, v in nodes if t not in TEXT_TYPES and t != "dataframe" and needle in v]
    assert leaks == [], f"{needle!r} reached an element that renders markdown or HTML: {leaks}"


def texts(at: AppTest) -> list[str]:
    return [v for t, v in rendered(at) if t in TEXT_TYPES]


def _ev(episode_id: str, seq: int, kind: str, payload: dict[str, Any], attempt: int | None = None) -> Event:
    return Event(episode_id=episode_id, seq=seq, kind=kind, attempt=attempt, payload=payload, duration_ms=12.0)


@pytest.fixture()
def episode(db_url) -> dict[str, Any]:
    """One LLM episode: an unusable first reply, a truncated repair, a failed call, a hostile reply, invented
    bullet ids, learning skipped; a second one whose Curator had ops dropped and whose delta waits for review."""
    P.get_or_create_playbook("pb")
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    msgs = [{"role": "system", "content": "You are an expert programmer."},
            {"role": "user", "content": "Write mean(xs). <b>not bold</b>"}]
    calls = [
        LLMCall(episode_id="ep-calls", role="generator", model="tiny", messages=msgs, response='{"code": "def m',
                prompt_tokens=250, completion_tokens=2048, latency_ms=4100.0, mode="json_schema",
                finish_reason="length", max_tokens=2048, retry=0, round=1, cost=0.0012, created_at=t0,
                error="reply truncated at 2048 tokens\nExpecting ',' delimiter: line 3 column 2737"),
        LLMCall(episode_id="ep-calls", role="generator", model="tiny", messages=msgs, response=None,
                prompt_tokens=0, completion_tokens=0, latency_ms=120000.0, mode="json_schema", finish_reason=None,
                max_tokens=2048, retry=1, round=2, cost=0.0, created_at=t0, error="timed out after 120 s"),
        LLMCall(episode_id="ep-calls", role="generator", model="tiny", messages=msgs, response=HOSTILE,
                prompt_tokens=300, completion_tokens=40, latency_ms=900.0, mode="json_schema", finish_reason="stop",
                max_tokens=2048, retry=0, round=1, cost=0.0003, created_at=t0),
        LLMCall(episode_id="ep-calls", role="reflector", model="tiny", messages=msgs, response="{",
                prompt_tokens=500, completion_tokens=1024, latency_ms=3000.0, mode="json_object",
                finish_reason="length", max_tokens=1024, retry=0, round=1, cost=0.0009, created_at=t0,
                error="truncated at 1024 tokens"),
        LLMCall(episode_id=None, role="curator", model="tiny", messages=msgs, response="logged without an episode"),
        LLMCall(episode_id="other-episode", role="generator", model="tiny", messages=msgs, response="elsewhere"),
    ]
    with write_session() as s:
        s.add_all(calls)
        s.flush()
        ids = [c.id for c in calls]
    dropped = [{"op": {"type": "ADD", "section": None, "content": None}, "reason": "ADD needs a section and content"},
               {"op": {"type": "TAG", "bullet_id": "b-99999", "tag": "helpful"},
                "reason": "bullet b-99999 was not in the Curator's prompt"}]
    with write_session() as s:
        s.add(Episode(id="ep-calls", playbook_id="pb", task="Write mean(xs)", status="failed", success=False,
                      attempts=2, max_iterations=2, model="tiny", tokens=4162))
        s.add(Episode(id="ep-dropped", playbook_id="pb", task="Write median(xs)", status="succeeded", success=True,
                      attempts=1, model="tiny", review_mode="manual", delta_id="d-dropped"))
        s.add(Delta(id="d-dropped", playbook_id="pb", episode_id="ep-dropped", reasoning="one rule", dropped=dropped))
        s.flush()
        s.add(DeltaOp(delta_id="d-dropped", seq=0, type="ADD", section="pitfalls",
                      content="Sort a copy before taking the middle element", justification="seen in a run"))
        s.add_all([
            _ev("ep-calls", 1, "route", {"playbook_id": "pb", "reason": "explicit"}),
            _ev("ep-calls", 2, "generate", {"error": "no code in the reply", "response": HOSTILE,
                                            "prompt_tokens": 550, "completion_tokens": 2088,
                                            "call_ids": ids[:3], "role": "generator"}, attempt=1),
            _ev("ep-calls", 3, "generate", {"code": "def mean(xs):\n    return 0\n", "bullet_ids": [],
                                            "invented_ids": 3, "invented": ["b-1", "b-12"], "call_ids": []},
                attempt=2),
            _ev("ep-calls", 4, "reflect", {"error": "truncated at 1024 tokens", "response": "{",
                                           "call_ids": [ids[3]]}),
            _ev("ep-calls", 5, "apply", {"delta_id": None, "operations": 0, "status": "skipped",
                                         "reason": SKIP_REASON, "version": None}),
            _ev("ep-dropped", 1, "curate", {"curation": {"reasoning": "one rule", "operations": [
                {"type": "ADD", "section": "pitfalls", "content": "Sort a copy before taking the middle element"}]},
                "dropped": dropped, "call_ids": [ids[4]]}),
            _ev("ep-dropped", 2, "apply", {"delta_id": "d-dropped", "operations": 1, "dropped": 2,
                                           "status": "pending"}),
        ])
        s.add(Reflection(episode_id="ep-dropped", playbook_id="pb", key_insight=HOSTILE,
                         error_identification="none", root_cause_analysis="none", correct_approach="sort"))
    return {"ids": ids}


def test_the_read_model_lists_an_episodes_calls_in_order(episode) -> None:
    calls = views.llm_calls("ep-calls")
    assert [c.id for c in calls] == episode["ids"][:4] and [c.n for c in calls] == [1, 2, 3, 4]
    first = calls[0]
    assert first.truncated and first.cut_at == 2048 and first.error_first_line == "reply truncated at 2048 tokens"
    repair = calls[1]
    assert (repair.round, repair.retry, repair.round_label, repair.finish_label) == (2, 1, "2 (repair)", "error")
    frame = views.llm_calls_frame(calls)
    assert list(frame["finish"])[0] == "length (cut at 2048 tokens)"
    assert list(frame["tokens in"]) == [250, 0, 300, 500] and list(frame["cap"]) == [2048, 2048, 2048, 1024]
    assert views.llm_calls("no-such-episode") == []
    out = views.learning_outcome("ep-calls")
    assert out.skipped == SKIP_REASON and out.invented == {"generate": 3}
    assert [(u.kind, u.attempt) for u in out.unusable] == [("generate", 1), ("reflect", None)]
    assert [d.reason for d in views.learning_outcome("ep-dropped").dropped] == [
        "ADD needs a section and content", "bullet b-99999 was not in the Curator's prompt"]


def test_the_trace_shows_every_call_and_model_text_only_as_text(episode) -> None:
    at = app("app_pages/trace.py", episode="ep-calls")
    table = next(d.value for d in at.dataframe if "tokens in" in d.value.columns)
    assert list(table["role"]) == ["generator", "generator", "generator", "reflector"]
    assert list(table["round"]) == ["1", "2 (repair)", "1", "1"] and list(table["retry"]) == [0, 1, 0, 0]
    assert list(table["tokens out"]) == [2048, 0, 40, 1024] and list(table["ms"]) == [4100, 120000, 900, 3000]
    assert list(table["error"])[:2] == ["reply truncated at 2048 tokens", "timed out after 120 s"]
    assert "elsewhere" not in "".join(texts(at))  # another episode's call
    # a reply cut at the cap is flagged, in the table, the call's label and its details
    labels = [e.label for e in at.expander]
    assert sum("cut at 2048 tokens" in label for label in labels) == 1
    assert any("cut at 1024 tokens" in label for label in labels)
    assert any("cut at 2048 tokens" in w.value for w in at.warning)
    # the messages sent and the raw reply, literally
    shown_as_text_only(at, HOSTILE)
    shown_as_text_only(at, "Write mean(xs). <b>not bold</b>")
    hostile = [c for c in at.code if c.value == HOSTILE]  # the call's reply and the unusable attempt's
    assert len(hostile) == 2 and {c.language for c in hostile} == {"plaintext"}  # no highlighting either
    # the learning outcome and the unusable attempt
    assert f"⏭️ Learning skipped: {SKIP_REASON}" in texts(at)
    assert "reply unusable: no code in the reply" in texts(at)
    assert "reply unusable: truncated at 1024 tokens" in texts(at)  # the Reflector's
    assert any(t.startswith("3 invented bullet ids ignored: b-1, b-12") for t in texts(at))
    assert any("reply unusable" in label and "generate" in label for label in labels)
    # each step links to its calls
    links = [str(n.proto) for n in at.get("page_link")]
    assert sum("call #" in link for link in links) == 4
    assert any(f"call={episode['ids'][2]}" in link and "call #3" in link for link in links)


def test_a_linked_call_opens_in_the_trace(episode) -> None:
    at = app("app_pages/trace.py", episode="ep-calls", call=str(episode["ids"][2]))
    opened = [e for e in at.expander if e.proto.expanded and e.label.startswith("#")]
    assert [e.label.split(" ")[0] for e in opened] == ["#3"]


def test_the_curators_dropped_ops_show_in_the_trace_and_the_review(episode) -> None:
    at = app("app_pages/trace.py", episode="ep-dropped")
    assert "2 proposed op(s) dropped" in texts(at)
    shown = next(t for t in texts(at) if "ADD needs a section and content" in t)
    assert '✗ {"type": "ADD", "section": null, "content": null}' in shown
    assert '✗ {"type": "TAG", "bullet_id": "b-99999", "tag": "helpful"}' in shown
    assert any("2 op(s) dropped" in e.label for e in at.expander)
    # the Curator's call was logged without the episode; the step names it, so the trace shows and links it
    assert [c.value for c in at.code if c.value == "logged without an episode"]
    assert any("call #1" in str(n.proto) and f"call={episode['ids'][4]}" in str(n.proto)
               for n in at.get("page_link"))

    at = app("app_pages/playbook.py", playbook="pb", delta="d-dropped")
    assert "2 proposed op(s) dropped" in texts(at)
    dropped = next(t for t in texts(at) if "ADD needs a section and content" in t)
    assert "bullet b-99999 was not in the Curator's prompt" in dropped and '"bullet_id": "b-99999"' in dropped
    assert views.delta_with_ops("d-dropped").dropped[1].op == {"type": "TAG", "bullet_id": "b-99999",
                                                               "tag": "helpful"}


def test_the_reflection_page_shows_the_learning_outcome_as_text(episode) -> None:
    at = app("app_pages/reflection.py", episode="ep-calls")
    assert "This episode has no reflection" in at.info[0].value
    assert f"⏭️ Learning skipped: {SKIP_REASON}" in texts(at)

    at = app("app_pages/reflection.py", episode="ep-dropped")
    shown_as_text_only(at, HOSTILE)
    assert "2 proposed op(s) dropped" in texts(at)
    assert "The Curator's delta d-dropped waits for review." in texts(at)


def test_old_episodes_without_the_new_fields_still_render(db_url) -> None:
    P.get_or_create_playbook("pb")
    with write_session() as s:
        s.add(Episode(id="ep-old", playbook_id="pb", task="old", status="succeeded", success=True))
        s.flush()
        s.add_all([_ev("ep-old", 1, "curate", {"curation": {"operations": []}, "dropped": "garbage"}),
                   _ev("ep-old", 2, "apply", {"delta_id": "d-x", "operations": 0, "status": "empty"}),
                   _ev("ep-old", 3, "generate", {"code": "print(1)", "call_ids": ["7", None, True],
                                                 "invented_ids": True})])
    at = app("app_pages/trace.py", episode="ep-old")
    assert "No model calls were logged for this episode." in [c.value for c in at.caption]
    assert not any("dropped" in t or "invented" in t for t in texts(at))
    assert views.call_ids_of({"call_ids": ["7", None, True, 3]}) == [7, 3]
