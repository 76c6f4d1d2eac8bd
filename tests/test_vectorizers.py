"""Vectorizers: an OpenAI-compatible API (a local server speaking the protocol), the embedding
cache, structured vectors and custom vectorizers, through the real pipeline."""

import email.utils
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datasources.connectors.base import ConnectorError, Unavailable
from datasources.embedders import (
    CachedVectorizer,
    OpenAICompatibleEmbedder,
    RetryLater,
    StructuredVectorizer,
    build_vectorizer,
    get_embedder,
    length_batches,
    retry_after_seconds,
)
from datasources.models import EmbeddingModel
from tasks.models import DeadLetter, SyncRun
from tasks.runner import TaskRunner
from tasks.services import mark_running

from .helpers import target_rows

DIM = 8


def fake_vector(text: str, dim: int = DIM) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:dim]]


class EmbeddingsAPI(ThreadingHTTPServer):
    """Speaks POST /v1/embeddings. Scripted failures: `fail_next` is a list of status codes to
    answer before succeeding; inputs containing REJECT make a 400; SLOW makes it hang."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.fail_next: list[int] = []
        self.retry_after = "0.1"
        self.dimension = DIM
        self.requests: list[list[str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.delay = 0.0  # seconds each successful answer takes
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests the server was answering at once
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server: EmbeddingsAPI = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        inputs = body["input"]
        with server.lock:
            server.requests.append(inputs)
            server.arrivals.append(time.monotonic())
            status = server.fail_next.pop(0) if server.fail_next else 200
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            self._answer(server, body, inputs, status)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, server, body, inputs, status):
        if self.headers.get("Authorization") != "Bearer sk-test":
            return self._send(401, {"error": {"message": "bad key"}})
        if status == 429:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": server.retry_after})
        if status >= 500:
            return self._send(status, {"error": {"message": "boom"}})
        if any("SLOW" in text for text in inputs):
            time.sleep(2)
        time.sleep(server.delay)
        if any("REJECT" in text for text in inputs):
            return self._send(400, {"error": {"message": "input contains forbidden content"}})
        data = [{"index": i, "embedding": fake_vector(t, server.dimension)} for i, t in enumerate(inputs)]
        return self._send(200, {"data": data, "model": body["model"]})


@pytest.fixture
def api():
    server = EmbeddingsAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def client(api, **kwargs) -> OpenAICompatibleEmbedder:
    options = {"name": "fake", "base_url": api.url, "model": "text-embedding-3-small", "api_key": "sk-test",
               "dimension": DIM, "batch_size": 4, "max_concurrency": 2, "timeout": 1.0, "max_backoff": 0.5}
    options.update(kwargs)
    return OpenAICompatibleEmbedder(**options)


def test_batches_concurrently_and_keeps_order(api):
    texts = [f"text {i}" for i in range(10)]
    assert client(api).encode(texts) == [fake_vector(t) for t in texts]
    assert sorted(len(r) for r in api.requests) == [2, 4, 4]


def test_never_more_requests_in_flight_than_max_concurrency(api):
    api.delay = 0.3  # long enough for requests to overlap
    vectorizer = client(api, batch_size=1, max_concurrency=3)
    texts = [f"text {i}" for i in range(12)]
    assert vectorizer.encode(texts) == [fake_vector(t) for t in texts]
    assert api.max_in_flight == 3

    # Two threads embedding at once share the same limit (the runner may call from several).
    api.max_in_flight = 0
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, vectorizer.encode(texts))) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] == [fake_vector(t) for t in texts]
    assert api.max_in_flight == 3


def gaps(api) -> list[float]:
    return [b - a for a, b in zip(api.arrivals, api.arrivals[1:])]


def test_429_waits_at_least_retry_after_even_beyond_max_backoff(api):
    # max_backoff is 0.2 s: plain backoff (at most 0.24 s with jitter) would retry far too early.
    api.fail_next = [429, 429]
    api.retry_after = "1.5"
    assert client(api, max_backoff=0.2).encode(["hello"]) == [fake_vector("hello")]
    assert len(api.requests) == 3
    assert all(gap >= 1.5 for gap in gaps(api)), gaps(api)


def test_retry_after_as_an_http_date(api):
    api.fail_next = [429]
    api.retry_after = email.utils.formatdate(time.time() + 3, usegmt=True)  # whole seconds: waits 2-3 s
    assert client(api, max_backoff=0.2).encode(["hello"]) == [fake_vector("hello")]
    assert len(api.requests) == 2 and gaps(api)[0] >= 1.9, gaps(api)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert retry_after_seconds("soon") is None


def test_a_retry_after_longer_than_the_limit_is_a_clear_error_not_a_short_wait(api):
    api.fail_next = [429]
    api.retry_after = "3600"
    started = time.monotonic()
    with pytest.raises(RetryLater, match=r"retry after 3600s \(Retry-After\), longer than the 60s") as raised:
        client(api, max_backoff=0.2, max_retry_after=60).encode(["hello"])
    assert raised.value.retry_after == 3600 and len(api.requests) == 1
    assert time.monotonic() - started < 5


def test_500_is_retried_with_backoff(api):
    api.fail_next = [500, 503]
    assert client(api).encode(["hello"]) == [fake_vector("hello")]
    assert len(api.requests) == 3


def test_a_server_that_keeps_failing_is_unavailable_not_dropped(api):
    api.fail_next = [503] * 10
    with pytest.raises(Unavailable, match="HTTP 503"):
        client(api).encode(["hello"])


def test_timeouts_are_retried_then_reported(api):
    with pytest.raises(Unavailable, match="did not answer in time"):
        client(api, timeout=0.3).encode(["SLOW"])


def test_wrong_dimension_and_wrong_key_are_clear(api):
    api.dimension = 5
    with pytest.raises(ConnectorError, match=r"\[5\]-dimensional vectors but 'fake' is set to 8"):
        client(api).encode(["x"])
    with pytest.raises(ConnectorError, match="refused the API key"):
        client(api, api_key="sk-wrong").encode(["x"])


def test_rejected_inputs_are_isolated(api):
    result = client(api).embed(["good one", "REJECT me", "good two", "fine"])
    assert result.vectors[0] == fake_vector("good one") and result.vectors[2] == fake_vector("good two")
    assert result.vectors[1] is None
    assert list(result.errors) == [1] and "forbidden content" in result.errors[1]


def test_structured_vectors_are_scaled_and_normalised():
    vectorizer = StructuredVectorizer(name="s", columns=[{"name": "a", "min": 0, "max": 10}, "b"])
    [vector] = vectorizer.encode([json.dumps([5, 2])])
    assert vector == pytest.approx([0.5 / (0.5**2 + 4) ** 0.5, 2 / (0.5**2 + 4) ** 0.5])
    assert vectorizer.dimension == 2


class Doubler:
    dimension = 3

    def encode(self, texts):
        return [[len(t), 2 * len(t), 1] for t in texts]


def make_doubler(model):
    return Doubler()


@pytest.mark.django_db
def test_custom_vectorizer_by_dotted_path():
    model = EmbeddingModel.objects.create(
        name="custom", kind="custom", dotted_path="tests.test_vectorizers:make_doubler"
    )
    vectorizer = build_vectorizer(model)
    assert vectorizer.encode(["abc"]) == [[3.0, 6.0, 1.0]] and vectorizer.dimension == 3
    broken = EmbeddingModel.objects.create(name="broken", kind="custom", dotted_path="no.such.module:factory")
    with pytest.raises(ConnectorError, match="cannot be imported"):
        build_vectorizer(broken)


def test_length_batches_keep_long_texts_from_padding_short_ones():
    lengths = [256, 10, 12, 250, 11, 40, 9, 256]
    batches = length_batches(lengths, max_batch=4, token_budget=512)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths))), "every text exactly once"
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 512, batch
    assert [6, 1, 4, 2] in batches, "the short texts share one batch"
    assert all(len(batch) <= 2 for batch in batches if any(lengths[i] >= 250 for i in batch))
    # No budget: batches by count alone, still sorted by length.
    assert length_batches(lengths, max_batch=3, token_budget=0) == [[6, 1, 4], [2, 5, 3], [0, 7]]


def test_the_model_embeds_in_length_batches_with_the_same_vectors_in_the_same_order():
    model = get_embedder()
    long_text = " ".join(f"word{i}" for i in range(400))  # beyond the model's 256 tokens
    short = [f"{verb} a {thing}" for verb in ("parse", "read", "write", "sort") for thing in
             ("zip archive", "date", "URL", "CSV file", "socket", "digest", "path", "number", "queue", "log")]
    texts = [*short[:20], long_text, *short[20:], long_text[:900]]
    batches = model.model_batches(texts)
    assert sorted(i for batch in batches for i in batch) == list(range(len(texts)))
    with_long = next(batch for batch in batches if 20 in batch)
    assert len(with_long) * model.max_tokens <= model.token_budget, "the long text pads only a few others"
    assert any(len(batch) > len(with_long) and 20 not in batch for batch in batches), batches
    vectors = model.encode(texts)
    plain = model.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    assert len(vectors) == len(texts)
    for got, expected in zip(vectors, plain.tolist(), strict=True):
        assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.django_db(transaction=True)
def test_the_cache_pays_for_each_text_once(redis_server):
    model = get_embedder()
    cached = CachedVectorizer(model, ttl=60)
    texts = [f"a sentence seen for the first time {time.time()} #{i}" for i in range(3)]
    before = model.texts_embedded
    first = cached.encode(texts)
    assert model.texts_embedded == before + 3
    again = cached.encode(texts + texts[:1])
    assert model.texts_embedded == before + 3, "cached texts must not reach the model"
    assert all(a == pytest.approx(b, abs=1e-6) for a, b in zip(again[:3], first, strict=True))
    assert cached.hits == 4


@pytest.mark.django_db(transaction=True)
def test_a_task_with_an_api_vectorizer_dead_letters_rejected_rows(api, make_task, source_db):
    _, conn = source_db
    task = make_task(6, mode="full", template="{title}")
    with conn.cursor() as cur:
        cur.execute("UPDATE docs SET title = 'REJECT this title' WHERE id = 4")
    vectorizer = EmbeddingModel.objects.create(
        name="fake-api", kind="openai", base_url=api.url, model_name="m", api_key="sk-test", dimension=DIM,
        batch_size=4,
    )
    task.vectorizer = vectorizer
    task.save()
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert run.rows_failed == 1 and run.rows_upserted == 5
    points = target_rows(task)
    assert sorted(points) == [1, 2, 3, 5, 6]
    letter = DeadLetter.objects.get(task=task)
    assert letter.key == [4] and "forbidden content" in letter.error and letter.row["title"] == "REJECT this title"


@pytest.mark.django_db(transaction=True)
def test_a_blank_dimension_is_learned_before_the_collection_is_made(api, make_task, source_db):
    from datasources.connectors import target_connector
    from datasources.connectors.milvus import VECTOR_FIELD
    from tasks.services import resnapshot_task

    task = make_task(4, mode="full", template="{title}")
    task.vectorizer = EmbeddingModel.objects.create(
        name="no-dimension", kind="openai", base_url=api.url, model_name="m", api_key="sk-test", dimension=None,
    )
    task.save()
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert api.requests[0] == ["dimension probe"]  # asked once, before anything was written
    target = target_connector(task.store)
    try:
        stored = target.fetch(task.collection, [1], [VECTOR_FIELD])
    finally:
        target.close()
    assert len(stored[1][VECTOR_FIELD]) == DIM
    assert sorted(target_rows(task)) == [1, 2, 3, 4]

    # The endpoint now answers with another size: the existing collection cannot take it.
    api.dimension = 5
    resnapshot_task(task)
    mark_running(task)
    run = TaskRunner(task.pk).run()
    assert run.status == SyncRun.Status.FAILED
    assert f"holds {DIM}-dimensional vectors but the model makes 5" in run.error, run.error
