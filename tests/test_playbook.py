import json

import pytest
from sqlmodel import select

from core import playbook as P
from core.playbook import portability as X
from core.playbook import versions as V
from core.playbook.ops import DeltaError
from core.storage.db import read_session
from core.storage.models import Delta, DeltaOp

pytestmark = pytest.mark.both_dbs  # every test here runs on SQLite and on PostgreSQL


@pytest.fixture()
def pb(db_url: str) -> str:
    P.get_or_create_playbook("demo", environment="python")
    P.apply_delta("demo", [
        {"type": "ADD", "section": "pitfalls", "content": "Integer division with // keeps results as int"},
        {"type": "ADD", "content": "Sort dictionaries by value with sorted(d.items(), key=lambda kv: kv[1])"},
        {"type": "ADD", "section": "snippets", "content": "Read CSV files with csv.DictReader for named columns"},
    ])
    return "demo"


def texts(pid: str) -> list[str]:
    return [b.content for b in P.active_bullets(pid)]


def test_playbook_created_on_first_use(db_url: str) -> None:
    p = P.get_or_create_playbook("new-one")
    assert p.id == "new-one" and p.current_version == 0
    assert P.get_or_create_playbook("new-one").id == "new-one"
    with pytest.raises(ValueError, match="invalid playbook id"):
        P.get_or_create_playbook("../etc/passwd")


def test_add_gives_readable_ids_and_a_version(pb: str) -> None:
    ids = [b.id for b in P.active_bullets(pb)]
    assert ids == ["py-00001", "py-00002", "py-00003"]
    assert [v.number for v in V.list_versions(pb)] == [1, 0]
    assert V.list_versions(pb)[0].bullet_count == 3


def test_update_tag_remove_merge(pb: str) -> None:
    P.apply_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00001", "content": "Use // for floor division of ints"},
                       {"type": "TAG", "bullet_id": "py-00002", "tag": "helpful"},
                       {"type": "TAG", "bullet_id": "py-00002", "tag": "harmful"},
                       {"type": "TAG", "bullet_id": "py-00003", "tag": "neutral"}])
    b1, b2, b3 = P.active_bullets(pb)
    assert b1.content == "Use // for floor division of ints"
    assert (b2.helpful, b2.harmful, b3.neutral) == (1, 1, 1)
    r = P.apply_delta(pb, [{"type": "MERGE", "bullet_ids": ["py-00002", "py-00003"], "content": "Use the stdlib well"}])
    merged = r.results[0].bullet_id
    live = {b.id: b for b in P.active_bullets(pb)}
    assert set(live) == {"py-00001", merged}
    assert live[merged].helpful == 1 and live[merged].neutral == 1
    old = P.get_bullet(pb, "py-00002")
    assert old is not None and old.status == "removed" and old.merged_into == merged
    P.apply_delta(pb, [{"type": "REMOVE", "bullet_id": "py-00001"}])
    assert [b.id for b in P.active_bullets(pb)] == [merged]
    assert P.get_bullet(pb, "py-00001").status == "removed"  # soft


@pytest.mark.parametrize("ops, message", [
    ([{"type": "UPDATE", "bullet_id": "py-09999", "content": "x"}], "does not exist"),
    ([{"type": "ADD", "content": "fine"}, {"type": "TAG", "bullet_id": "nope", "tag": "helpful"}], "does not exist"),
    ([{"type": "FROB", "content": "x"}], "operation 1"),
    ([{"type": "ADD", "content": "   "}], "empty"),
    ([{"type": "ADD", "content": "x" * 10_000_000}], "limit"),
    ([{"type": "TAG", "bullet_id": "py-00001", "tag": "great"}], "operation 1"),
    ([{"type": "MERGE", "bullet_ids": ["py-00001"], "content": "x"}], "two distinct"),
    ([], "no operations"),
])
def test_bad_ops_are_refused_and_nothing_changes(pb: str, ops: list, message: str) -> None:
    before = (texts(pb), V.list_versions(pb)[0].number)
    with pytest.raises(DeltaError, match=message):
        P.apply_delta(pb, ops)
    assert (texts(pb), V.list_versions(pb)[0].number) == before


def test_op_on_removed_bullet_is_refused(pb: str) -> None:
    P.apply_delta(pb, [{"type": "REMOVE", "bullet_id": "py-00001"}])
    with pytest.raises(DeltaError, match="was removed"):
        P.apply_delta(pb, [{"type": "TAG", "bullet_id": "py-00001", "tag": "helpful"}])


def test_dedup_turns_near_duplicate_add_into_tag(pb: str) -> None:
    r = P.apply_delta(pb, [{"type": "ADD", "content": "Integer division with // keeps results as int."}])
    assert r.results[0].type == "TAG" and r.results[0].bullet_id == "py-00001"
    assert "near-duplicate" in r.results[0].note
    assert len(P.active_bullets(pb)) == 3
    assert P.get_bullet(pb, "py-00001").helpful == 1


def test_render_uses_ace_convention(pb: str) -> None:
    text = P.render(None, P.active_bullets(pb))
    lines = text.splitlines()
    assert lines[0] == P.BEGIN_MARK and lines[-1] == P.END_MARK
    assert "## pitfalls" in lines
    assert "[py-00001] helpful=0 harmful=0 :: Integer division with // keeps results as int" in lines


def test_render_respects_token_budget(pb: str) -> None:
    bullets = P.active_bullets(pb)
    full = P.render(None, bullets)
    small = P.render(None, bullets, token_budget=30)
    assert len(small) < len(full) and small.count("::") == 1
    assert P.render(None, bullets, token_budget=5).count("::") == 0


def test_retrieve_ranks_by_relevance_and_falls_back(pb: str) -> None:
    hits = P.retrieve(pb, "read a csv file with columns", 2)
    assert hits[0].bullet.id == "py-00003" and hits[0].scores["lexical"] > 0
    assert len(hits) == 2  # one match, filled up by the fallback
    assert len(P.retrieve(pb, "zzzz qqqq", 3)) == 3
    P.apply_delta(pb, [{"type": "REMOVE", "bullet_id": "py-00003"}])
    assert all(h.bullet.id != "py-00003" for h in P.retrieve(pb, "read a csv file", 5))


def test_counters_break_ties(pb: str) -> None:
    P.apply_delta(pb, [{"type": "TAG", "bullet_id": "py-00002", "tag": "helpful"}] * 3)
    P.apply_delta(pb, [{"type": "TAG", "bullet_id": "py-00001", "tag": "harmful"}])
    hits = P.retrieve(pb, "unrelated words entirely", 3)
    assert hits[0].bullet.id == "py-00002" and hits[-1].bullet.id == "py-00001"


def test_embed_prompt(pb: str) -> None:
    out = P.embed_prompt(pb, "Load the csv file", 1)
    assert out.startswith("Load the csv file\n\n" + P.BEGIN_MARK)
    assert "[py-00003]" in out and out.count("::") == 1 and out.endswith(P.END_MARK)
    fresh = P.embed_prompt("brand-new", "hi", 5)
    assert P.get_playbook("brand-new") is not None and fresh.count("::") == 0


def test_manual_review_decides_op_by_op(pb: str) -> None:
    did = P.propose_delta(pb, [{"type": "ADD", "content": "Guard against empty input lists before max()"},
                               {"type": "UPDATE", "bullet_id": "py-00002", "content": "Prefer key= functions"}],
                          reasoning="from a run")
    assert len(P.active_bullets(pb)) == 3
    with read_session() as s:
        rows = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == did).order_by(DeltaOp.seq)))
    r = P.decide_ops(did, [P.Decision(rows[0].oid, True, content="Check for empty lists before max()")])
    assert r.version == 2
    assert "Check for empty lists before max()" in texts(pb)
    with read_session() as s:
        assert s.get(Delta, did).status == "pending"
    r = P.decide_ops(did, [P.Decision(rows[1].oid, False, note="too vague")])
    assert r.version is None
    with read_session() as s:
        d = s.get(Delta, did)
        assert d.status == "partially_applied"
        assert s.get(DeltaOp, rows[1].oid).note == "too vague"
    with pytest.raises(DeltaError, match="already"):
        P.decide_ops(did, [P.Decision(rows[1].oid, True)])


def test_update_conflict_is_not_silently_overwritten(pb: str) -> None:
    did = P.propose_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00001", "content": "proposal A"}])
    P.apply_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00001", "content": "someone else's edit"}])
    with read_session() as s:
        oid = s.exec(select(DeltaOp.oid).where(DeltaOp.delta_id == did)).one()
    with pytest.raises(DeltaError, match="changed since"):
        P.decide_ops(did, [P.Decision(oid, True)])
    assert P.get_bullet(pb, "py-00001").content == "someone else's edit"


def test_auto_apply_keeps_good_ops_and_notes_bad_ones(pb: str) -> None:
    did, _ = P.submit_delta(pb, [{"type": "TAG", "bullet_id": "py-00404", "tag": "helpful"},  # as the Curator's
                                 {"type": "ADD", "content": "Use functools.lru_cache for recursive memoization"}])
    r = P.auto_apply(did)
    assert [x.type for x in r.results] == ["ADD"] and len(r.rejected) == 1
    with read_session() as s:
        d = s.get(Delta, did)
        ops = list(s.exec(select(DeltaOp).where(DeltaOp.delta_id == did).order_by(DeltaOp.seq)))
    assert d.status == "partially_applied"
    assert ops[0].decision == "rejected" and "does not exist" in ops[0].note


def test_versions_diff_and_restore(pb: str) -> None:
    P.apply_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00001", "content": "Changed text"},
                       {"type": "REMOVE", "bullet_id": "py-00002"},
                       {"type": "ADD", "content": "Brand new strategy about regex anchors"}])
    d = V.diff_versions(pb, 1, 2)
    assert [x.content for x in d.added] == ["Brand new strategy about regex anchors"]
    assert [x.bullet_id for x in d.removed] == ["py-00002"]
    assert d.changed[0][0].content.startswith("Integer division") and d.changed[0][1].content == "Changed text"
    v = V.restore_version(pb, 1)
    assert v == 3
    assert sorted(texts(pb)) == sorted(s.content for s in V.state_at(pb, 1))
    assert V.diff_versions(pb, 1, 3).empty
    assert V.list_versions(pb)[0].bullet_count == 3
    with pytest.raises(DeltaError, match="no version 42"):
        V.restore_version(pb, 42)


def test_json_export_import_round_trip(pb: str) -> None:
    P.apply_delta(pb, [{"type": "TAG", "bullet_id": "py-00001", "tag": "helpful"},
                       {"type": "REMOVE", "bullet_id": "py-00003"}])
    data = X.export_json(pb)
    n, _ = X.import_playbook("copy", data)
    assert n == 3
    a, b = json.loads(data), json.loads(X.export_json("copy"))

    def strip(d):
        return [{k: v for k, v in x.items() if k not in ("created_at", "updated_at")} for x in d["bullets"]]

    assert strip(a) == strip(b)
    r = P.apply_delta("copy", [{"type": "ADD", "content": "A new bullet after import about generators"}])
    assert r.results[0].bullet_id == "py-00004"


def test_import_keeps_generated_ids_clear_of_the_files_ids_and_reads_numbers_as_text(db_url: str) -> None:
    P.apply_delta("imp", [{"type": "ADD", "content": "first thing to remember"}])
    doc = {"format": "ace-playground/1", "playbook": {}, "bullets": [
        {"id": "b-00002", "content": "imported with an explicit id"},
        {"content": "imported without an id", "source_episode_id": 42},
        {"id": 7, "content": "an id written as a number"}]}
    assert X.import_playbook("imp", json.dumps(doc))[0] == 3
    got = {b.id: b for b in P.active_bullets("imp")}
    assert set(got) == {"b-00001", "b-00002", "b-00003", "7"}
    assert got["b-00003"].source_episode_id == "42"
    assert [h.bullet.id for h in P.retrieve("imp", "imported without an id", 1)] == ["b-00003"]


def test_markdown_and_ace_text_import(pb: str) -> None:
    md = X.export_markdown(pb)
    assert "## pitfalls" in md and "[py-00001] helpful=0 harmful=0 ::" in md
    X.import_playbook("from-md", md)
    assert sorted(texts("from-md")) == sorted(texts(pb))
    ace_text = "## STRATEGIES & INSIGHTS\n[str-00001] helpful=5 harmful=0 :: Break problems into steps\n" \
               "## COMMON MISTAKES\n[mis-00002] helpful=1 harmful=2 :: Do not forget units\n"
    X.import_playbook("ace", ace_text)
    bs = P.active_bullets("ace")
    assert [(b.id, b.section, b.helpful, b.harmful) for b in bs] == [
        ("str-00001", "strategies_insights", 5, 0), ("mis-00002", "common_mistakes", 1, 2)]


def test_kayba_skillbook_import(db_url: str) -> None:
    new = {"skills": {"ctx-1": {"id": "ctx-1", "section": "context", "issue": "Flaky network",
                                "insight": "Retry with backoff", "helpful_count": 2, "harmful_count": 0,
                                "neutral_count": 1, "active": True},
                      "ctx-2": {"id": "ctx-2", "section": "context", "content": "old one", "active": False}},
           "sections": {"context": ["ctx-1", "ctx-2"]}}
    X.import_playbook("kayba", json.dumps(new))
    (b,) = P.active_bullets("kayba")
    assert b.content == "Flaky network\nRetry with backoff" and b.helpful == 2 and b.neutral == 1
    old = {"bullets": {"b1": {"id": "b1", "section": "general", "content": "Older format", "helpful": 3}},
           "sections": {"general": ["b1"]}}
    X.import_playbook("kayba-old", json.dumps(old))
    assert [(b.id, b.helpful) for b in P.active_bullets("kayba-old")] == [("b1", 3)]


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe\x00bad bytes", "not UTF-8"),
    (b'{"format": "ace-playground/1", "bullets": [{"id": "x", "cont', "truncated"),
    (b"just some prose", "no bullets found"),
    (b'{"format": "ace-playground/1", "bullets": [{"id": "x", "content": ""}]}', "empty"),
])
def test_bad_import_files_change_nothing(pb: str, data: bytes, message: str) -> None:
    before = texts(pb)
    with pytest.raises(DeltaError, match=message):
        X.import_playbook(pb, data)
    assert texts(pb) == before


def test_auto_mode_rejects_bad_ops_without_touching_the_rows_they_name(pb: str) -> None:
    """Lenient apply has no savepoints: a rejected op must be refused before it changes anything."""
    before = {b.id: (b.content, b.helpful, b.status) for b in P.active_bullets(pb)}
    did, res = P.submit_delta(pb, [
        {"type": "MERGE", "bullet_ids": ["py-00001", "py-00404"], "content": "merged"},  # one source is unknown
        {"type": "UPDATE", "bullet_id": "py-00999", "content": "no such bullet"},
        {"type": "TAG", "bullet_id": "py-00003", "tag": "helpful"},
    ], auto=True)
    assert res is not None and [x.type for x in res.results] == ["TAG"] and len(res.rejected) == 2
    after = {b.id: (b.content, b.helpful, b.status) for b in P.active_bullets(pb)}
    assert after["py-00001"] == before["py-00001"] and after["py-00002"] == before["py-00002"]
    assert after["py-00003"][1] == before["py-00003"][1] + 1
    assert len(after) == len(before)  # no merged bullet was left behind


def test_retrieve_sees_each_new_version_of_a_bullet(pb: str) -> None:
    """Retrieval keeps bullets per playbook version in memory; a change must never serve the old row."""
    first = {h.bullet.id: h.bullet for h in P.retrieve(pb, "integer division", 3)}
    assert first["py-00001"].content.startswith("Integer division")
    P.apply_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00001", "content": "Integer division: // floors"},
                       {"type": "TAG", "bullet_id": "py-00001", "tag": "harmful"}])
    again = {h.bullet.id: h.bullet for h in P.retrieve(pb, "integer division", 3)}
    assert again["py-00001"].content == "Integer division: // floors" and again["py-00001"].harmful == 1
    P.apply_delta(pb, [{"type": "REMOVE", "bullet_id": "py-00001"}])
    assert "py-00001" not in {h.bullet.id for h in P.retrieve(pb, "integer division", 3)}


def test_curator_dedup_sees_adds_earlier_in_the_same_delta(pb: str) -> None:
    twins = [{"type": "ADD", "content": "Memoize recursive calls with functools.lru_cache"},
             {"type": "ADD", "content": "Memoize recursive calls with functools.lru_cache."}]
    _, r = P.submit_delta(pb, twins, auto=True)
    assert r is not None and [x.type for x in r.results] == ["ADD", "TAG"]
    assert r.results[1].bullet_id == r.results[0].bullet_id and P.get_bullet(pb, r.results[0].bullet_id).helpful == 1
    # a person's explicit delta keeps both
    assert [x.type for x in P.apply_delta("other", twins).results] == ["ADD", "ADD"]


def test_dedup_ranks_with_the_in_memory_index_when_it_is_current(pb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.retrieval import fts

    P.retrieve(pb, "sort a dictionary", 5)  # builds the in-memory index at the current version
    monkeypatch.setattr(fts, "fts_rows", lambda *a, **k: pytest.fail("FTS5 queried though the index is current"))
    _, res = P.submit_delta(pb, [{"type": "ADD", "content": "Sort dictionaries by value: sorted(d.items(), "
                                                          "key=lambda kv: kv[1])"}], auto=True)
    assert res is not None and [x.type for x in res.results] == ["TAG"] and res.results[0].bullet_id == "py-00002"


@pytest.mark.parametrize("warm", [False, True])
def test_dedup_judges_bullets_as_the_delta_left_them(pb: str, warm: bool) -> None:
    """A bullet removed, merged or rewritten earlier in the same delta is no duplicate of a later ADD."""
    if warm:
        P.retrieve(pb, "integer division", 3)  # the in-memory index at the committed version
    copy_1 = "Integer division with // keeps results as int."
    _, res = P.submit_delta(pb, [{"type": "REMOVE", "bullet_id": "py-00001"}, {"type": "ADD", "content": copy_1}],
                            auto=True)
    assert res is not None and [x.type for x in res.results] == ["REMOVE", "ADD"]
    old_2 = P.get_bullet(pb, "py-00002").content
    _, res = P.submit_delta(pb, [{"type": "UPDATE", "bullet_id": "py-00002", "content": "Use heapq for top-k"},
                                 {"type": "ADD", "content": old_2}], auto=True)
    assert res is not None and [x.type for x in res.results] == ["UPDATE", "ADD"]
    # a rejected op in between (its lookup flushes the session) must not hide an earlier ADD
    twin = "Prefer pathlib.Path over os.path for building file paths"
    _, res = P.submit_delta(pb, [{"type": "ADD", "content": twin},
                                 {"type": "TAG", "bullet_id": "py-09999", "tag": "helpful"},
                                 {"type": "ADD", "content": twin + "."}], auto=True)
    assert res is not None and [x.type for x in res.results] == ["ADD", "TAG"] and len(res.rejected) == 1
