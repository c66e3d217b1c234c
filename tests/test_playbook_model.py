"""Random deltas against a plain-Python model of the playbook.

The applier writes bullets with plain statements and hands the rows it wrote
to the in-memory index, so after every delta this checks, against a model
that knows only the documented rules:
- every bullet (text, section, counters, status, merged_into) and the next id;
- the version: one more when anything applied, none when a strict delta failed;
- the version's revisions and its counts (replaying revisions gives the live rows);
- what retrieval serves from memory is exactly what is stored.
"""

import random
import string
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Optional

import pytest
from sqlmodel import select

from core import playbook as P
from core import retrieval as R
from core.playbook import versions as V
from core.playbook.ops import DEFAULT_SECTION, DeltaError, normalize_section
from core.storage.db import read_session
from core.storage.models import Bullet, BulletRevision, DeltaOp, Playbook, PlaybookVersion
from core.tokens import estimate_tokens


@dataclass(frozen=True)
class M:
    """A bullet as the model sees it."""

    content: str
    section: str = DEFAULT_SECTION
    helpful: int = 0
    harmful: int = 0
    neutral: int = 0
    status: str = "active"
    merged_into: Optional[str] = None


class Model:
    def __init__(self) -> None:
        self.bullets: dict[str, M] = {}
        self.seq = 1

    def live(self, bid: Optional[str]) -> bool:
        return bid in self.bullets and self.bullets[bid].status == "active"

    def _new(self, m: M) -> str:
        bid = f"b-{self.seq:05d}"
        self.seq += 1
        self.bullets[bid] = m
        return bid

    def apply(self, op: dict[str, Any]) -> bool:
        """Apply one op as documented; False when it cannot apply (and then nothing changed)."""
        t, b = op["type"], self.bullets
        if t == "ADD":
            twin = next((i for i, m in b.items() if m.status == "active" and m.content == op["content"]), None)
            if twin is not None:  # a near duplicate (here: an exact copy) is tagged helpful instead
                b[twin] = replace(b[twin], helpful=b[twin].helpful + 1)
            else:
                self._new(M(op["content"], normalize_section(op.get("section") or DEFAULT_SECTION)))
            return True
        if t == "MERGE":
            ids = op["bullet_ids"]
            if not all(self.live(i) for i in ids):
                return False
            src = [b[i] for i in ids]
            new = self._new(M(op["content"], normalize_section(op.get("section") or src[0].section),
                              sum(m.helpful for m in src), sum(m.harmful for m in src), sum(m.neutral for m in src)))
            for i in ids:
                b[i] = replace(b[i], status="removed", merged_into=new)
            return True
        if not self.live(op["bullet_id"]):
            return False
        i = op["bullet_id"]
        if t == "UPDATE":
            b[i] = replace(b[i], content=op["content"], section=normalize_section(op.get("section") or b[i].section))
        elif t == "TAG":
            b[i] = replace(b[i], **{op["tag"]: getattr(b[i], op["tag"]) + 1})
        elif t == "REMOVE":
            b[i] = replace(b[i], status="removed")
        return True


def words(rng: random.Random) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(6))


def random_op(rng: random.Random, model: Model) -> dict[str, Any]:
    ids = list(model.bullets) or ["b-00001"]
    some = lambda: rng.choice(ids + ["b-09999"])  # noqa: E731 - now and then one that never existed
    kind = rng.choices(["ADD", "COPY", "UPDATE", "TAG", "REMOVE", "MERGE"], [4, 2, 2, 4, 1, 1])[0]
    section = rng.choice([None, "general", "pitfalls"])
    if kind == "COPY":  # an exact copy of a bullet (removed or not): a TAG when that bullet is live
        return {"type": "ADD", "content": model.bullets[rng.choice(ids)].content if model.bullets else words(rng)}
    if kind == "ADD":
        return {"type": "ADD", "content": words(rng), "section": section}
    if kind == "UPDATE":
        return {"type": "UPDATE", "bullet_id": some(), "content": words(rng), "section": section}
    if kind == "TAG":
        return {"type": "TAG", "bullet_id": some(), "tag": rng.choice(["helpful", "harmful", "neutral"])}
    if kind == "REMOVE":
        return {"type": "REMOVE", "bullet_id": some()}
    if len(ids) < 2:
        return {"type": "ADD", "content": words(rng)}
    return {"type": "MERGE", "bullet_ids": rng.sample(ids, 2), "content": words(rng), "section": section}


def stored(pid: str) -> tuple[dict[str, M], Playbook, PlaybookVersion]:
    with read_session() as s:
        rows = {b.id: M(b.content, b.section, b.helpful, b.harmful, b.neutral, b.status, b.merged_into)
                for b in s.exec(select(Bullet).where(Bullet.playbook_id == pid))}
        pb = s.get(Playbook, pid)
        ver = s.exec(select(PlaybookVersion).where(PlaybookVersion.playbook_id == pid,
                                                   PlaybookVersion.number == pb.current_version)).one()
        dupes = s.exec(select(BulletRevision.bullet_pk, BulletRevision.version)
                       .where(BulletRevision.playbook_id == pid)).all()
    assert len(dupes) == len(set(dupes)), "a bullet got two revisions in one version"
    return rows, pb, ver


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.both_dbs
def test_random_deltas_match_the_model(db_url: str, settings_env, seed: int) -> None:
    settings_env(ACE_EMBEDDER="none")
    sqlite = db_url.startswith("sqlite")
    rng, model, pid = random.Random(seed), Model(), f"model-{seed}"
    P.get_or_create_playbook(pid)
    version = 0
    for step in range(70):
        ops = [random_op(rng, model) for _ in range(rng.randint(1, 5))]
        trial = Model()
        trial.bullets, trial.seq = dict(model.bullets), model.seq
        applied = [trial.apply(op) for op in ops]
        strict = rng.random() < 0.4
        if strict:  # a person's delta: all or nothing
            if all(applied):
                P.apply_delta(pid, ops)
                model, version = trial, version + 1
            else:
                with pytest.raises(DeltaError):
                    P.apply_delta(pid, ops)
        else:  # the Curator's, applied automatically: what cannot apply is rejected, the rest lands
            _, res = P.submit_delta(pid, ops, auto=True)
            assert res is not None and [i for i, _ in res.rejected] == \
                [oid for oid, ok in zip(_op_ids(res.delta_id), applied) if not ok]
            model = trial
            version += any(applied)
        rows, pb, ver = stored(pid)
        assert rows == model.bullets, f"step {step}: {ops}"
        assert pb.current_version == ver.number == version and pb.next_seq == model.seq
        live = [m for m in model.bullets.values() if m.status == "active"]
        assert ver.bullet_count == len(live)
        assert ver.token_count == sum(estimate_tokens(f"[{i}] helpful={m.helpful} harmful={m.harmful} :: {m.content}")
                                      for i, m in model.bullets.items() if m.status == "active")
        replayed = {st.bullet_id: (st.content, st.helpful, st.harmful, st.neutral)
                    for st in V.state_at(pid, version)}
        assert replayed == {i: (m.content, m.helpful, m.harmful, m.neutral)
                            for i, m in model.bullets.items() if m.status == "active"}
        if step % 7 == 0 and live:  # what the in-memory index serves is what is stored
            P.retrieve(pid, "anything", 500)
            with R.cached_only() if sqlite else nullcontext():  # PostgreSQL: the cached path off the event loop
                hits = P.retrieve(pid, live[0].content, 500)
            assert {h.bullet.id: M(h.bullet.content, h.bullet.section, h.bullet.helpful, h.bullet.harmful,
                                   h.bullet.neutral, h.bullet.status, h.bullet.merged_into)
                    for h in hits} == {i: m for i, m in model.bullets.items() if m.status == "active"}

    if sqlite:
        with read_session() as s:  # the full-text index followed every text change (raises if not)
            s.connection().exec_driver_sql("INSERT INTO bullet_fts(bullet_fts, rank) VALUES ('integrity-check', 1)")


def _op_ids(delta_id: str) -> list[int]:
    with read_session() as s:
        return list(s.exec(select(DeltaOp.oid).where(DeltaOp.delta_id == delta_id).order_by(DeltaOp.seq)))
