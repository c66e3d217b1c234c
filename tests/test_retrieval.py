"""Hybrid ranking, its weights and fallbacks, provenance, query expansion and semantic dedup."""


import pytest

from core import config
from core import playbook as P
from core import retrieval as R
from core.retrieval import RankWeights, bm25
from core.retrieval import lexical as lex  # the `lexical` fixture names a playbook
from core.storage.db import write_session
from core.storage.models import Episode
from tests.fake_llm import Status
from tests.support import SQLITE_ONLY

BULLETS = [
    {"type": "ADD", "section": "pitfalls",
     "content": "Guard against empty sequences before calling max or dividing by len"},
    {"type": "ADD", "section": "snippets", "content": "Read CSV files with csv.DictReader for named columns"},
    {"type": "ADD", "section": "strategies",
     "content": "Use asyncio.gather to run independent coroutines concurrently"},
    {"type": "ADD", "section": "pitfalls", "content": "Compare floats with math.isclose instead of =="},
]


pytestmark = pytest.mark.usefixtures("fresh_retrieval")


@pytest.fixture()
def lexical(db_url: str, settings_env) -> str:
    settings_env(ACE_EMBEDDER="none")
    P.apply_delta("demo", BULLETS)
    return "demo"


@pytest.fixture()
def hybrid(fake_llm, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ACE_EMBEDDER", "endpoint")
    monkeypatch.setenv("ACE_EMBED_MODEL", "fake-embed")
    config.reset_settings()
    P.apply_delta("demo", BULLETS)
    return "demo"


def ids(hits: list[R.Retrieved]) -> list[str]:
    return [h.bullet.id for h in hits]


def test_every_result_says_why_it_was_chosen(lexical: str) -> None:
    hits = P.retrieve(lexical, "read the csv columns", 4)
    assert hits[0].bullet.id == "b-00002"
    assert set(hits[0].scores) >= {"semantic", "lexical", "counters", "provenance"}
    assert hits[0].scores["lexical"] > 0 and hits[0].scores["semantic"] == 0.0
    assert [h.scores.get("fallback") for h in hits[1:]] == [1.0, 1.0, 1.0]
    assert hits[0].score > hits[1].score


def test_lexical_mode_understands_everyday_words(lexical: str) -> None:
    # "average" and "nothing" are not in the bullet; the synonym table maps them to "mean"/"empty"
    assert P.retrieve(lexical, "The average of an input crashes when nothing is passed", 1)[0].bullet.id == "b-00001"
    assert R.fts_query("average", synonyms=False) == '"average"'
    assert '"mean"' in R.fts_query("average")


def test_removed_bullets_never_return(hybrid: str) -> None:
    P.apply_delta(hybrid, [{"type": "REMOVE", "bullet_id": "b-00002"}])
    for q in ("Read CSV files with csv.DictReader for named columns", "csv", "zzz"):
        assert "b-00002" not in ids(P.retrieve(hybrid, q, 10))
    assert len(P.retrieve(hybrid, "zzz", 10)) == 3


def test_hybrid_uses_meaning_and_words(hybrid: str) -> None:
    hits = P.retrieve(hybrid, "run independent coroutines concurrently with gather", 4)
    assert hits[0].bullet.id == "b-00003"
    assert hits[0].scores["semantic"] > 0.5 and hits[0].scores["lexical"] > 0
    assert len(hits) == 4 and all("semantic" in h.scores for h in hits)


def test_weights_are_a_setting_and_change_the_ranking(hybrid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    P.apply_delta(hybrid, [{"type": "TAG", "bullet_id": "b-00004", "tag": "helpful"}] * 5)
    q = "csv columns"
    assert ids(P.retrieve(hybrid, q, 1)) == ["b-00002"]
    monkeypatch.setenv("ACE_RANK_WEIGHTS", "semantic=0, lexical=0, provenance=0, counters=1")
    config.reset_settings()
    assert RankWeights.from_settings() == RankWeights(semantic=0, lexical=0, provenance=0, counters=1)
    assert ids(P.retrieve(hybrid, q, 1)) == ["b-00004"]
    assert ids(P.retrieve(hybrid, q, 1, weights=RankWeights())) == ["b-00002"]  # an explicit blend wins


def test_rank_weights_parse() -> None:
    w = RankWeights.parse("semantic=2; lexical=0.5")
    assert (w.semantic, w.lexical, w.counters) == (2.0, 0.5, RankWeights().counters)
    assert RankWeights.parse("") == RankWeights()
    assert set(w.as_dict()) == {"semantic", "lexical", "counters", "provenance"}
    with pytest.raises(ValueError, match="unknown signal 'bm25'"):
        RankWeights.parse("bm25=1")
    with pytest.raises(ValueError, match="needs a number"):
        RankWeights.parse("lexical=lots")


def _episode(task: str) -> str:
    with write_session() as s:
        ep = Episode(playbook_id="demo", task=task, status="succeeded")
        s.add(ep)
        s.flush()
        return ep.id


@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_provenance_lifts_bullets_learned_from_similar_tasks(mode: str, request: pytest.FixtureRequest) -> None:
    pid = request.getfixturevalue(mode)
    ep = _episode("parse the nightly sales report and total revenue per region")
    P.apply_delta(pid, [{"type": "ADD", "content": "Strip thousands separators before float conversion"},
                        {"type": "ADD", "content": "Strip currency symbols before float conversion"}], episode_id=ep)
    hits = P.retrieve(pid, "total revenue per region in the nightly sales report: strip before float conversion", 2)
    assert {h.bullet.id for h in hits} == {"b-00005", "b-00006"}
    assert all(h.scores["provenance"] > 0.3 for h in hits)
    plain = P.retrieve(pid, "strip before float conversion", 2)
    assert all(h.scores["provenance"] < hits[0].scores["provenance"] for h in plain)


def test_query_expansion_adds_the_models_pitfalls_and_is_cached(hybrid: str, fake_llm) -> None:
    server = fake_llm
    server.reply({"pitfalls": ["floats need math.isclose", "tolerance when comparing"]})
    task = "Decide whether two measured lengths are the same"
    hits = P.retrieve(hybrid, task, 1, expand=True)
    assert hits[0].bullet.id == "b-00004"
    assert len(server.chat_requests()) == 1
    P.retrieve(hybrid, task, 1, expand=True)
    assert len(server.chat_requests()) == 1  # cached per task
    assert "Likely pitfalls: floats need math.isclose" in R.expand_query(task)


def test_query_expansion_failure_falls_back_to_the_task(hybrid: str, fake_llm) -> None:
    server = fake_llm
    server.reply(Status(404, "no such model"))
    hits = P.retrieve(hybrid, "read the csv columns", 1, expand=True)
    assert hits[0].bullet.id == "b-00002"


def test_expansion_is_off_without_an_llm(lexical: str) -> None:
    assert R.expand_query("anything at all") == "anything at all"
    assert P.retrieve(lexical, "read the csv columns", 1, expand=True)[0].bullet.id == "b-00002"


def test_semantic_near_duplicate_add_becomes_a_tag(hybrid: str) -> None:
    # the same words glued in another order: far apart for the lexical check, one vector for the fake embedder
    text_ = "concurrently_run independent_coroutines to_gather asyncio_use"
    assert P.similarity(text_, BULLETS[2]["content"]) < config.get_settings().dedup_threshold
    r = P.apply_delta(hybrid, [{"type": "ADD", "content": text_}])
    assert r.results[0].type == "TAG" and r.results[0].bullet_id == "b-00003"
    assert "near-duplicate" in r.results[0].note
    assert len(P.active_bullets(hybrid)) == 4


def test_semantic_dedup_threshold_is_a_setting(hybrid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACE_SEMANTIC_DEDUP_THRESHOLD", "1.01")
    config.reset_settings()
    r = P.apply_delta(hybrid, [{"type": "ADD",
                                "content": "concurrently_run independent_coroutines to_gather asyncio_use"}])
    assert r.results[0].type == "ADD"


def test_merge_suggestions_from_embeddings(hybrid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACE_SEMANTIC_DEDUP_THRESHOLD", "1.01")  # let the near-copy in
    config.reset_settings()
    P.apply_delta(hybrid, [{"type": "ADD", "content": "floats_with compare_math isclose_instead of"}])
    pairs = R.similar_pairs(hybrid, threshold=0.95)
    assert [(a, b) for a, b, _ in pairs] == [("b-00004", "b-00005")]
    assert R.similar_pairs(hybrid, threshold=0.95, among=["b-00001"]) == []
    assert R.similar_pairs(hybrid, threshold=0.95, among=["b-00005"])[0][:2] == ("b-00004", "b-00005")


def test_merge_suggestions_need_embeddings(lexical: str) -> None:
    assert R.similar_pairs(lexical) == []


def test_embed_prompt_in_hybrid_mode(hybrid: str) -> None:
    out = P.embed_prompt(hybrid, "Use asyncio.gather to run independent coroutines concurrently", 1)
    assert "[b-00003]" in out and out.count("::") == 1


def test_in_memory_index_follows_every_version(lexical: str) -> None:
    assert ids(P.retrieve(lexical, "csv columns", 1)) == ["b-00002"]
    P.apply_delta(lexical, [{"type": "UPDATE", "bullet_id": "b-00002", "content": "Parse JSON with json.loads"},
                            {"type": "ADD", "content": "Write CSV rows with csv.writer and newline=''"}])
    hits = P.retrieve(lexical, "csv rows", 2)
    assert ids(hits)[0] == "b-00005" and hits[1].scores.get("fallback") == 1.0  # old csv text forgotten
    assert ids(P.retrieve(lexical, "json loads", 1)) == ["b-00002"]
    P.apply_delta(lexical, [{"type": "REMOVE", "bullet_id": "b-00005"}])
    assert "b-00005" not in ids(P.retrieve(lexical, "csv rows", 10))
    assert len(P.retrieve(lexical, "csv rows", 10)) == 4


def test_in_memory_bm25_matches_word_forms_and_synonyms() -> None:
    assert R.porter("sorting") == R.porter("sorted") == R.porter("sorts") == "sort"
    assert R.porter("duplicates") == R.porter("duplicate")
    terms = R.query_terms("Write a function that sorts the duplicates")
    assert "sort" in terms and "duplic" in terms and "function" not in terms  # boilerplate dropped
    assert "uniqu" in terms  # from the synonym table


def test_results_are_detached_bullets_with_every_field(lexical: str) -> None:
    from sqlalchemy import inspect

    b = P.retrieve(lexical, "csv columns", 1)[0].bullet
    assert inspect(b).detached and b.playbook_id == "demo" and b.created_at is not None
    assert b.model_dump()["content"].startswith("Read CSV")


@SQLITE_ONLY  # FTS5
def test_large_cold_playbook_answers_through_fts5_while_the_index_builds(lexical: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lex, "COLD_BUILD_ROWS", 2)
    built = []
    monkeypatch.setattr(lex, "_build_in_background", lambda url, pid: built.append(pid))
    hits = P.retrieve(lexical, "read the csv columns", 2)
    assert built == ["demo"] and ids(hits)[0] == "b-00002"  # the FTS5 path answered
    R.warm("demo")
    assert ids(P.retrieve(lexical, "read the csv columns", 1)) == ["b-00002"]


def test_embed_prompt_creates_an_unknown_playbook(db_url: str, settings_env) -> None:
    settings_env(ACE_EMBEDDER="none")
    out = P.embed_prompt("brand-new", "hello", 5)
    assert out.endswith(f"{P.BEGIN_MARK}\n{P.END_MARK}") and P.get_playbook("brand-new") is not None
    with pytest.raises(ValueError):
        P.embed_prompt("bad id!", "hello", 5)


def test_concurrent_first_queries_build_the_index_once(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's warm-up and its first requests race to index a playbook: one builds, the others wait."""
    import threading
    import time

    P.apply_delta("race", [{"type": "ADD", "content": f"strategy number {i} about parsing dates"} for i in range(50)])
    R.clear_cache()
    builds = []
    real_build = bm25.BM25Index.build

    def slow_build(self, rows, version):  # type: ignore[no-untyped-def]
        builds.append(version)
        time.sleep(0.2)  # long enough for every thread to arrive while it runs
        real_build(self, rows, version)

    monkeypatch.setattr(bm25.BM25Index, "build", slow_build)
    threads = [threading.Thread(target=R.warm, args=("race",))] + [
        threading.Thread(target=P.retrieve, args=("race", "parse a date", 5)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert [h.bullet.content for h in P.retrieve("race", "parsing dates", 1)][0].startswith("strategy number")


def test_a_write_moves_this_process_index_forward_without_rescanning(db_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """After a commit the in-memory index takes the rows it wrote; re-reading the playbook (O(n) at
    10,000 bullets: ~40 ms) is only for changes made by other processes."""
    P.apply_delta("fwd", [{"type": "ADD", "content": f"note {i} about csv quoting"} for i in range(20)])
    P.retrieve("fwd", "csv quoting", 5)  # index at the current version
    monkeypatch.setattr(lex, "_refresh", lambda *a, **k: pytest.fail("rescanned the playbook after its own write"))
    P.apply_delta("fwd", [{"type": "UPDATE", "bullet_id": "b-00003", "content": "escape embedded quotes when "
                                                                               "writing csv by hand"},
                          {"type": "ADD", "content": "parse timestamps with zone offsets via datetime.fromisoformat"},
                          {"type": "REMOVE", "bullet_id": "b-00004"}])
    hits = {h.bullet.id: h.bullet.content for h in P.retrieve("fwd", "embedded quotes timestamps zone", 20)}
    assert hits["b-00003"].startswith("escape embedded quotes") and "b-00004" not in hits
    assert any("fromisoformat" in c for c in hits.values())
