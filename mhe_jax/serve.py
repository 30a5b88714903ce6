"""HTTP server for a trained workdir, with micro-batching.

``python -m mhe_jax.serve --workdir=DIR --port=8000``

Loads the workdir with :func:`mhe_jax.load`, compiles every batch and
feature-width bucket up to the widest instance it accepts
(:meth:`~mhe_jax.inference.Predictor.warmup`), so that no request compiles,
and then answers

* ``GET /healthz``: ``{"status": "ok", "num_classes": C, "model": ..., ...}``;
* ``POST /v1/predict``: a JSON body ``{"instances": [...], "k": 5}`` (or one
  instance's fields at the top level) -> ``{"predictions": [{"labels": [...],
  "scores": [...], "names": [...]}, ...]}``, one prediction per instance, best
  first; ``names`` only when the workdir has label names.

An instance is, by the model's inputs (``model_info.json``'s
``input_keys``):

* bag-of-words models: ``{"indices": [int, ...], "values": [float, ...]}``,
  feature ids in ``[0, input_size)``, finite values, at most
  ``--max_features`` of them (default ``input_size``);
* next-token models: ``{"tokens": [int, ...]}`` (token ids; the last
  ``context`` are the context, fewer are left-padded with ``<unk>``) or
  ``{"text": "..."}`` (tokenised with the training vocabulary);
* item-sequence models: ``{"items": [int, ...]}``, oldest first (the last
  ``max_len`` are used), item ids in ``[0, num_items)``.

Bad requests get a 4xx status and ``{"error": "..."}`` naming the problem
(the instance and field, the bad value, the allowed range); an unexpected
failure is a 500 with a short message, its traceback in the server's log.

Micro-batching: request threads parse and check their body, then queue it;
one worker thread takes the first queued request, gathers more for at most
``--max_wait_ms`` (only while other requests are still being received) up
to ``--max_batch`` instances, and runs them as one
:meth:`~mhe_jax.inference.Predictor.predict` call (padded to a jitted batch
bucket; one bag-of-words instance alone:
:meth:`~mhe_jax.inference.Predictor.predict_one`, the same program with less
host work), then hands each request its rows. A lone request never waits. A
request's ``k`` runs at the smallest ``--warmup_k`` at least as large, or
above them at the next power of two up to ``--max_k`` (compiled on first
use), and gets the first k of that top-k: every head returns its top-k best
first, so this is its top-k (shortlist heads whose shortlist grows with k
rank within the larger shortlist). A request that fails inside a batch is
run again alone, so only it gets the error.

As a command it makes jax run each CPU program on the calling thread
(``jax_cpu_enable_async_dispatch=False``, ``--sync_cpu_dispatch``, on by
default) before it loads the model: about 25 us less per one-row request on
Delicious MHP (docs/inference.md, "One-request latency"). The setting holds
for the whole process, so :class:`Server` never changes it: a program that
serves from its own process sets it there (:func:`use_sync_cpu_dispatch`).

Why the standard library (``http.server.ThreadingHTTPServer``, ``json``,
``threading``, ``queue``): no dependency beyond what :func:`mhe_jax.load`
needs (``mhe_jax[train]``), and the part worth optimising is the jitted
batch, which micro-batching fills; the HTTP layer is a thread per
connection. Its per-request Python work (HTTP parsing, JSON, the hand-off to
the batch thread) is measured beside the model call in docs/serving.md.

Example (in a process; ``stop`` also runs on SIGINT/SIGTERM from the command
line)::

  import mhe_jax
  from mhe_jax import serve
  server = serve.Server(mhe_jax.load("/tmp/delicious_mhc"), port=0)
  port = server.start()                 # warmed up, listening
  # POST http://127.0.0.1:{port}/v1/predict ...
  server.stop()
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import http
import http.server
import json
import math
import queue
import signal
import threading
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from mhe_jax import inference
from mhe_jax.data import corpus as corpus_lib

PREDICT_PATH = "/v1/predict"
HEALTH_PATH = "/healthz"
_ROUTES = {PREDICT_PATH: "POST", HEALTH_PATH: "GET"}
DEFAULT_BATCH_SIZES = (1, 8, 64)
DEFAULT_MAX_K = 100
_DRAIN_FACTOR = 16
_BOW_FIELDS = ("indices", "values")
_TOKEN_FIELDS = ("tokens", "text")
_ITEM_FIELDS = ("items",)


class RequestError(Exception):
  """A request the server answers with ``status`` and ``{"error": message}``."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = int(status)
    self.message = message


# ------------------------------------------------------------ the requests
@dataclasses.dataclass
class Request:
  """A checked predict request.

  Attributes:
    inputs: the model's input arrays for its ``n`` instances: bag-of-words
      ``(ids [n, m] int32 (-1 pads), values [n, m] float32)``, next-token
      ``(ids [n, context] int32,)``, item-sequence ``(items [n, T] int32
      (-1 pads on the left),)``.
    n: instances.
    k: labels per instance the client asked for.
  """

  inputs: tuple[np.ndarray, ...]
  n: int
  k: int


def _reject_constant(name: str):
  raise RequestError(400, f"the body holds {name}, which JSON does not "
                     "allow: numbers must be finite")


def _int_list(value: Any, where: str, low: int, high: int,
              what: str) -> np.ndarray:
  """A JSON list of ints in ``[low, high)`` as int64, or a RequestError."""
  if not isinstance(value, list):
    raise RequestError(400, f"{where} must be a list of integers, got "
                       f"{_json_type(value)}")
  for i, x in enumerate(value):
    if type(x) is not int:  # pylint: disable=unidiomatic-typecheck
      raise RequestError(400, f"{where}[{i}] must be an integer {what}, got "
                         f"{json.dumps(x)}")
  if not value:
    return np.zeros(0, np.int64)
  try:
    ids = np.asarray(value, np.int64)
  except OverflowError:
    ids = None
  bad = (np.flatnonzero((ids < low) | (ids >= high)) if ids is not None else
         [next(i for i, x in enumerate(value) if not low <= x < high)])
  if len(bad):
    i = int(bad[0])
    raise RequestError(400, f"{where}[{i}]: {what} {value[i]} is out of "
                       f"range [{low}, {high})")
  return ids


def _json_type(value: Any) -> str:
  return {dict: "an object", list: "a list", str: "a string", bool: "a "
          "boolean", type(None): "null", int: "a number",
          float: "a number"}.get(type(value), type(value).__name__)


class RequestParser:
  """Parses and checks predict bodies for one predictor (thread-safe).

  Args:
    predictor: the loaded model.
    default_k: k of a body without ``"k"``.
    max_k: the largest k accepted.
    max_features: bag-of-words models: the most features an instance may
      hold.
  """

  def __init__(self, predictor: inference.Predictor, default_k: int,
               max_k: int, max_features: int | None = None):
    self.predictor = predictor
    self.default_k, self.max_k = default_k, max_k
    self.max_features = max_features
    self.kind = model_kind(predictor)
    self.fields = {"bag_of_words": _BOW_FIELDS, "tokens": _TOKEN_FIELDS,
                   "items": _ITEM_FIELDS}[self.kind]
    self.input_size = int(predictor.input_size)
    self.context = predictor.context
    self.max_len = getattr(predictor, "max_len", None)
    self.has_vocab = (self.kind == "tokens"
                      and predictor.label_names is not None)
    if self.has_vocab:  # builds the predictor's token table once, here
      predictor.encode_text([""])

  def parse(self, body: bytes) -> Request:
    """A checked :class:`Request` from a body, or a RequestError (400)."""
    try:
      text = body.decode("utf-8")
    except UnicodeDecodeError as e:
      raise RequestError(400, f"the body is not UTF-8 text (byte {e.start})"
                         ) from None
    try:
      payload = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
      raise RequestError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
      raise RequestError(400, "the body nests JSON arrays or objects too "
                         "deeply") from None
    if not isinstance(payload, dict):
      raise RequestError(400, "the body must be a JSON object like "
                         f"{self._example()}, got {_json_type(payload)}")
    k = self.check_k(payload.get("k", self.default_k))
    if "instances" in payload:
      unknown = sorted(set(payload) - {"instances", "k"})
      if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r} beside "
                           "'instances'; the body holds 'instances' and "
                           "optionally 'k'")
      instances = payload["instances"]
      if not isinstance(instances, list) or not instances:
        raise RequestError(400, "'instances' must be a non-empty list of "
                           f"objects like {self._example()}, got "
                           + ("an empty list" if instances == [] else
                              _json_type(instances)))
      names = [f"instances[{i}]" for i in range(len(instances))]
    else:
      instances = [{key: v for key, v in payload.items() if key != "k"}]
      names = [""]
    rows = [self._instance(x, where) for x, where in zip(instances, names)]
    return Request(self._stack(rows), len(rows), k)

  def check_k(self, k: Any) -> int:
    if type(k) is not int:  # pylint: disable=unidiomatic-typecheck
      raise RequestError(400, f"k must be an integer, got {json.dumps(k)}")
    if not 1 <= k <= self.max_k:
      raise RequestError(400, f"k={k} is out of range [1, {self.max_k}] "
                         f"(the server's max_k; the model has "
                         f"{self.predictor.num_classes} classes)")
    return k

  def _example(self) -> str:
    return {"bag_of_words": '{"instances": [{"indices": [3, 17], "values": '
                            '[0.5, 1.0]}], "k": 5}',
            "tokens": '{"instances": [{"text": "to be or not to"}], "k": 5}',
            "items": '{"instances": [{"items": [4, 9, 2]}], "k": 5}'
            }[self.kind]

  def _instance(self, x: Any, where: str):
    """One instance's model input; ``where`` names it in errors ("" for a
    body that is the instance)."""
    whole = where or "the body"

    def at(field):
      return f"{where}.{field}" if where else field

    if not isinstance(x, dict):
      raise RequestError(400, f"{whole} must be an object like "
                         f"{self._example()}, got {_json_type(x)}")
    unknown = sorted(set(x) - set(self.fields))
    if unknown:
      raise RequestError(400, f"{whole}: unknown field {unknown[0]!r}; "
                         f"{self._reads()}")
    if self.kind == "bag_of_words":
      missing = [f for f in _BOW_FIELDS if f not in x]
      if missing:
        raise RequestError(400, f"{whole}: missing field {missing[0]!r}; "
                           f"{self._reads()}")
      n = len(x["indices"]) if isinstance(x["indices"], list) else 0
      if self.max_features is not None and n > self.max_features:
        raise RequestError(400, f"{whole}: {n} features, more than the "
                           f"server's limit of {self.max_features} per "
                           "instance (--max_features)")
      ids = _int_list(x["indices"], at("indices"), 0, self.input_size,
                      "feature id")
      values = x["values"]
      if not isinstance(values, list):
        raise RequestError(400, f"{at('values')} must be a list of numbers, "
                           f"got {_json_type(values)}")
      if len(values) != len(ids):
        raise RequestError(400, f"{whole}: {len(ids)} indices but "
                           f"{len(values)} values; they pair up one to one")
      for i, v in enumerate(values):
        if type(v) not in (int, float):
          raise RequestError(400, f"{at('values')}[{i}] must be a number, "
                             f"got {json.dumps(v)}")
      with np.errstate(over="ignore"):
        # An int too large for a float64 reads as inf, rejected below.
        values = np.asarray([v if abs(v) < 1e308 else math.inf
                             for v in values], np.float64).astype(np.float32)
      bad = np.flatnonzero(~np.isfinite(values))
      if bad.size:
        i = int(bad[0])
        raise RequestError(400, f"{at('values')}[{i}] = {x['values'][i]} is "
                           "not a finite float32")
      return ids, values
    if self.kind == "tokens":
      if len(x) != 1:
        raise RequestError(400, f"{whole}: give either 'tokens' or 'text'; "
                           f"{self._reads()}")
      if "text" in x:
        if not self.has_vocab:
          raise RequestError(400, f"{whole}: this model has no vocabulary "
                             "(no label names): send 'tokens'")
        if not isinstance(x["text"], str):
          raise RequestError(400, f"{at('text')} must be a string, got "
                             f"{_json_type(x['text'])}")
        return self.predictor.encode_text([x["text"]])[0]
      ids = _int_list(x["tokens"], at("tokens"), 0, self.input_size,
                      "token id")[-self.context:]
      row = np.full(self.context, corpus_lib.UNK_ID, np.int32)
      row[self.context - len(ids):] = ids
      return row
    if "items" not in x:
      raise RequestError(400, f"{whole}: missing field 'items'; "
                         f"{self._reads()}")
    ids = _int_list(x["items"], at("items"), 0, self.input_size,
                    "item id")
    if not ids.size:
      raise RequestError(400, f"{at('items')} is empty: give at least one "
                         "item id")
    ids = ids[-self.max_len:]
    row = np.full(self.max_len, -1, np.int32)
    row[self.max_len - len(ids):] = ids
    return row

  def _reads(self) -> str:
    return {"bag_of_words": "a bag-of-words model reads 'indices' and "
                            "'values'",
            "tokens": "a next-token model reads 'tokens' (ids) or 'text'",
            "items": "an item-sequence model reads 'items'"}[self.kind]

  def _stack(self, rows: list) -> tuple[np.ndarray, ...]:
    if self.kind != "bag_of_words":
      return (np.stack(rows).astype(np.int32, copy=False),)
    return pad_features([r[0] for r in rows], [r[1] for r in rows])


def pad_features(ids: Sequence[np.ndarray], values: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Rows of feature ids and values -> ``([n, m] int32, [n, m] float32)``.

  ``m`` is the longest row (at least 1); ids -1 and values 0 pad the rest.
  """
  width = max(1, max(len(r) for r in ids))
  out_ids = np.full((len(ids), width), -1, np.int32)
  out_values = np.zeros((len(ids), width), np.float32)
  for i, (r, v) in enumerate(zip(ids, values)):
    out_ids[i, :len(r)] = r
    out_values[i, :len(v)] = v
  return out_ids, out_values


def model_kind(predictor: inference.Predictor) -> str:
  """``bag_of_words``, ``tokens`` or ``items``, from the model's inputs."""
  if predictor.is_bag_of_words:
    return "bag_of_words"
  keys = tuple(predictor.input_keys)
  if keys == ("features",) and predictor.context is not None:
    return "tokens"
  if keys == ("items",) and getattr(predictor, "max_len", None):
    return "items"
  raise ValueError("mhe_jax.serve serves bag-of-words, next-token and "
                   f"item-sequence models; this model reads {list(keys)}")


# ----------------------------------------------------------- the batcher
@dataclasses.dataclass(eq=False)
class _Job:
  request: Request
  run_k: int
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  result: Any = None
  error: RequestError | None = None

  def finish(self, result=None, error=None):
    self.result, self.error = result, error
    self.done.set()


_STOP = object()


class MicroBatcher:
  """One worker thread that runs queued requests in batched predict calls.

  A batch of one bag-of-words instance runs through ``predict_one``: the
  same program, with less host work (one client of benchmarks/serve_load.py
  on its small synthetic MHP model: p50 0.31 ms a request, 0.35-0.38 ms
  through ``predict``).

  Args:
    predictor: the loaded model; only the worker thread calls its
      ``predict`` and ``predict_one``.
    kind: :func:`model_kind` of it.
    max_batch: instances per predict call (a larger request runs alone).
    max_wait_s: how long the worker gathers requests after the first one
      while more are being received.
  """

  def __init__(self, predictor: inference.Predictor, kind: str,
               max_batch: int, max_wait_s: float):
    self.predictor, self.kind = predictor, kind
    self.max_batch, self.max_wait_s = max_batch, max_wait_s
    self._names = (None if predictor.label_names is None
                   else np.asarray(predictor.label_names, dtype=object))
    self._queue: queue.SimpleQueue = queue.SimpleQueue()
    self._lock = threading.Lock()
    self._arriving = 0
    self._stopping = False
    self._thread: threading.Thread | None = None
    self.requests = self.instances = self.batches = 0

  def start(self) -> None:
    self._thread = threading.Thread(target=self._loop, name="mhe-batcher",
                                    daemon=True)
    self._thread.start()

  @contextlib.contextmanager
  def arriving(self) -> Iterator[Callable[[Request, int], _Job]]:
    """Marks a request as being received while the block runs.

    Yields ``submit(request, run_k) -> job``, which queues the request and
    ends the mark in one step, so the worker never waits for a request that
    is already queued; ``job.done`` is set when its result is in.
    """
    with self._lock:
      self._arriving += 1
    marked = [True]

    def submit(request: Request, run_k: int) -> _Job:
      job = _Job(request, run_k)
      with self._lock:
        self._arriving -= 1
        marked[0] = False
        if self._stopping:
          raise RequestError(503, "the server is shutting down")
        self._queue.put(job)
      return job

    try:
      yield submit
    finally:
      if marked[0]:
        with self._lock:
          self._arriving -= 1

  def stop(self, timeout: float | None = None) -> None:
    """Runs what is queued, then ends the worker; later submits get 503."""
    with self._lock:
      if self._stopping:
        return
      self._stopping = True
      self._queue.put(_STOP)
    if self._thread is not None:
      self._thread.join(timeout)

  def _loop(self) -> None:
    carry = None
    while True:
      job = carry if carry is not None else self._queue.get()
      carry = None
      if job is _STOP:
        return
      jobs, total = [job], job.request.n
      deadline = time.monotonic() + self.max_wait_s
      while total < self.max_batch:
        try:
          nxt = self._queue.get_nowait()
        except queue.Empty:
          remaining = deadline - time.monotonic()
          if remaining <= 0 or not self._arriving:
            break
          try:
            nxt = self._queue.get(timeout=remaining)
          except queue.Empty:
            break
        if nxt is _STOP or total + nxt.request.n > self.max_batch:
          carry = nxt
          break
        jobs.append(nxt)
        total += nxt.request.n
      try:
        self._run(jobs)
      except Exception as e:  # pylint: disable=broad-except
        # A fault of the batcher itself: answer, never leave a request
        # waiting on a dead worker.
        logging.exception("the batcher failed")
        for job in jobs:
          if not job.done.is_set():
            job.finish(error=_internal_error(e))

  def _features(self, jobs: Sequence[_Job]):
    if self.kind == "bag_of_words":
      if len(jobs) == 1:
        return jobs[0].request.inputs
      ids = [r for j in jobs for r in j.request.inputs[0]]
      values = [r for j in jobs for r in j.request.inputs[1]]
      return pad_features(ids, values)
    rows = np.concatenate([j.request.inputs[0] for j in jobs])
    return {"items": rows} if self.kind == "items" else rows

  def _run(self, jobs: Sequence[_Job]) -> None:
    groups = collections.defaultdict(list)
    for job in jobs:
      groups[job.run_k].append(job)
    for run_k, group in groups.items():
      if len(group) == 1:
        self._run_alone(group[0])
        continue
      try:
        pred = self.predictor.predict(self._features(group), run_k)
      except Exception:  # pylint: disable=broad-except
        pred = None
      if pred is not None:
        self._split(group, pred)
      else:  # find the request that fails; answer the others
        for job in group:
          self._run_alone(job)

  def _run_alone(self, job: _Job) -> None:
    if job.request.n == 1 and self.kind == "bag_of_words":
      self._run_one(job)
      return
    try:
      pred = self.predictor.predict(self._features([job]), job.run_k)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(job, e)
      return
    self._split([job], pred)

  def _run_one(self, job: _Job) -> None:
    """One bag-of-words instance through ``predict_one``: the same program
    and result as ``predict``, with less host work."""
    ids, values = job.request.inputs
    try:
      scores, labels = self.predictor.predict_one(ids[0], values[0],
                                                  k=job.run_k)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(job, e)
      return
    scores, labels = scores[None], labels[None]
    names = None if self._names is None else self._names[labels]
    self._split([job], inference.Prediction(scores, labels, names))

  def _fail(self, job: _Job, e: Exception) -> None:
    if isinstance(e, (ValueError, TypeError)):  # input the parser let through
      logging.info("predict rejected a request: %s", e)
      job.finish(error=RequestError(400, str(e)))
      return
    logging.error("predict failed", exc_info=e)
    job.finish(error=_internal_error(e))

  def _split(self, group: Sequence[_Job], pred) -> None:
    self.batches += 1
    start = 0
    for job in group:
      n, k = job.request.n, job.request.k
      rows = slice(start, start + n)
      names = None if pred.names is None else pred.names[rows, :k]
      job.finish(result=(pred.scores[rows, :k], pred.labels[rows, :k], names))
      start += n
      self.requests += 1
      self.instances += n


def _internal_error(e: Exception) -> RequestError:
  return RequestError(
      500, f"internal error ({type(e).__name__}); see the server log")


# -------------------------------------------------------------- the HTTP
def _predictions(scores, labels, names) -> list[dict]:
  finite = bool(np.isfinite(scores).all())
  scores, labels = scores.tolist(), labels.tolist()
  if not finite:  # JSON has no -Infinity: null
    scores = [[s if math.isfinite(s) else None for s in row] for row in scores]
  if names is None:
    return [{"labels": l, "scores": s} for l, s in zip(labels, scores)]
  return [{"labels": l, "scores": s, "names": n}
          for l, s, n in zip(labels, scores, names.tolist())]


class _HTTPServer(http.server.ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  # socketserver's default backlog of 5 resets bursts of new connections.
  request_queue_size = 1024
  app: Server


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the :class:`Server`; every answer is JSON."""

  protocol_version = "HTTP/1.1"
  server_version = "mhe_jax.serve"
  disable_nagle_algorithm = True
  server: _HTTPServer

  def setup(self):
    self.timeout = self.server.app.read_timeout_s
    super().setup()

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.vlog(1, "%s %s", self.address_string(), format % args)

  def log_request(self, code="-", size="-"):
    if logging.vlog_is_on(1):
      super().log_request(code, size)

  def _reply(self, status: int, payload: dict, *, close: bool = False,
             headers: Sequence[tuple[str, str]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    for key, value in headers:
      self.send_header(key, value)
    if close or self.server.app.stopping:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def send_error(self, code, message=None, explain=None):
    """Malformed requests the base class rejects: a JSON answer too."""
    del explain
    try:
      phrase = http.HTTPStatus(code).phrase
    except ValueError:
      phrase = "error"
    self._reply(code, {"error": message or phrase}, close=True)

  def handle_expect_100(self):
    try:
      self._content_length()
    except RequestError as e:
      self._reply(e.status, {"error": e.message}, close=True)
      return False
    return super().handle_expect_100()

  def _content_length(self) -> int:
    if self.headers.get("Transfer-Encoding"):
      raise RequestError(411, "send the body with a Content-Length header "
                         "(chunked transfer encoding is not supported)")
    raw = self.headers.get("Content-Length")
    if raw is None:
      raise RequestError(411, "a POST needs a Content-Length header")
    try:
      length = int(raw)
    except ValueError:
      length = -1
    if length < 0:
      raise RequestError(400, f"bad Content-Length {raw!r}")
    limit = self.server.app.max_request_bytes
    if length > limit:
      raise RequestError(413, f"the body is {length} bytes, more than the "
                         f"server's limit of {limit} (--max_request_bytes); "
                         "split the instances over several requests")
    return length

  def _dispatch(self) -> None:
    method = self.command
    body_pending = bool(self.headers.get("Content-Length", "0") != "0"
                        or self.headers.get("Transfer-Encoding"))
    try:
      path = self.path.split("?", 1)[0]
      allowed = _ROUTES.get(path)
      if allowed is None:
        raise RequestError(404, f"no such path {path!r}: the server answers "
                           f"GET {HEALTH_PATH} and POST {PREDICT_PATH}")
      if method != allowed:
        self._reply(405, {"error": f"{path} takes {allowed}, not {method}"},
                    close=body_pending, headers=[("Allow", allowed)])
        return
      if path == HEALTH_PATH:
        app_ = self.server.app
        self._reply(503 if app_.stopping else 200, app_.health())
        return
      body_pending = False
      self._predict()
    except RequestError as e:
      self._reply(e.status, {"error": e.message}, close=body_pending)
    except (ConnectionError, TimeoutError):
      self.close_connection = True
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("error answering %s %s", method, self.path)
      self._reply(500, {"error": _internal_error(e).message}, close=True)

  # Every method gets a JSON answer (405 where the path takes another).
  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = (  # pylint: disable=invalid-name
      _dispatch)

  def _predict(self) -> None:
    app_ = self.server.app
    try:
      length = self._content_length()
    except RequestError as e:
      # The body is not kept. Up to _DRAIN_FACTOR times the limit is read
      # and dropped, so that a client that sends its whole body before
      # reading gets the answer; the connection closes either way.
      length = int(self.headers.get("Content-Length") or 0)
      if e.status == 413 and length <= _DRAIN_FACTOR * app_.max_request_bytes:
        while length > 0:
          chunk = self.rfile.read(min(length, 1 << 16))
          if not chunk:
            break
          length -= len(chunk)
      self._reply(e.status, {"error": e.message}, close=True)
      return
    with app_.batcher.arriving() as submit:
      body = self.rfile.read(length)
      if len(body) < length:
        self.close_connection = True
        return
      request = app_.parser.parse(body)
      job = submit(request, app_.run_k(request.k))
    job.done.wait()
    if job.error is not None:
      raise job.error
    self._reply(200, {"predictions": _predictions(*job.result)})


class Server:
  """An HTTP prediction server for one :class:`~mhe_jax.inference.Predictor`.

  Args:
    predictor: from :func:`mhe_jax.load`.
    host: the address to listen on.
    port: the port; 0 picks a free one (see :attr:`port` after ``start``).
    max_batch: instances per predict call (default the predictor's largest
      batch bucket).
    max_wait_ms: how long the batcher waits for more requests after the
      first one of a batch (only while others are being received).
    max_request_bytes: the largest body accepted (larger: 413).
    max_k: the largest k a request may ask for (default
      ``min(100, the head's largest k)``).
    default_k: k of a request that gives none.
    warmup_k: the k values compiled at :meth:`start` (default
      ``(default_k,)``); requests run at the smallest of them >= their k.
    read_timeout_s: a connection idle or stalled this long is closed.
    name: the model's name in ``/healthz`` (default ``predictor.name``).
    max_features: bag-of-words models: the most features an instance may
      hold (more: 400); :meth:`warmup` compiles the feature widths up to it.
      Default the model's input size (the distinct feature ids).

  It leaves jax's configuration as it is (:func:`use_sync_cpu_dispatch`
  is the command's, or the embedding program's, to call).
  """

  def __init__(self, predictor: inference.Predictor, *,
               host: str = "127.0.0.1", port: int = 0,
               max_batch: int | None = None, max_wait_ms: float = 2.0,
               max_request_bytes: int = 1 << 20, max_k: int | None = None,
               default_k: int = 5, warmup_k: Sequence[int] | None = None,
               read_timeout_s: float = 30.0, name: str | None = None,
               max_features: int | None = None):
    head_max_k = min(int(predictor.num_classes),
                     int(getattr(predictor, "max_k", predictor.num_classes)))
    max_k = min(DEFAULT_MAX_K, head_max_k) if not max_k else int(max_k)
    if not 1 <= max_k <= head_max_k:
      raise ValueError(f"max_k={max_k} is not in [1, {head_max_k}], the most "
                       "this model can return")
    if not 1 <= default_k <= max_k:
      raise ValueError(f"default_k={default_k} is not in [1, max_k={max_k}]")
    warmup_k = sorted({int(k) for k in (warmup_k or (default_k,))})
    if warmup_k[0] < 1 or warmup_k[-1] > max_k:
      raise ValueError(f"warmup_k={warmup_k} must be in [1, max_k={max_k}]")
    max_batch = int(max_batch or max(predictor.batch_sizes))
    if predictor.is_bag_of_words:
      max_features = int(max_features or predictor.input_size)
      if max_features < 1:
        raise ValueError(f"max_features={max_features} must be >= 1")
    else:
      max_features = None
    if max_batch < 1 or max_wait_ms < 0 or max_request_bytes < 1:
      raise ValueError("max_batch and max_request_bytes must be >= 1 and "
                       f"max_wait_ms >= 0; got {max_batch}, "
                       f"{max_request_bytes}, {max_wait_ms}")
    self.predictor = predictor
    self.host, self._requested_port = host, int(port)
    self.max_k, self.default_k, self.warmup_k = max_k, int(default_k), warmup_k
    self.max_request_bytes = int(max_request_bytes)
    self.read_timeout_s = float(read_timeout_s)
    self.name = name or getattr(predictor, "name", "model")
    self.max_features = max_features
    self.parser = RequestParser(predictor, self.default_k, max_k,
                                max_features)
    self.batcher = MicroBatcher(predictor, self.parser.kind, max_batch,
                                max_wait_ms / 1e3)
    self.stopping = False
    self._httpd: _HTTPServer | None = None
    self._thread: threading.Thread | None = None
    self._stopped = threading.Event()

  @property
  def port(self) -> int:
    """The bound port (after :meth:`start`)."""
    if self._httpd is None:
      raise RuntimeError("the server is not started")
    return self._httpd.server_address[1]

  @property
  def url(self) -> str:
    return f"http://{self.host}:{self.port}"

  def run_k(self, k: int) -> int:
    """The k a request for ``k`` runs at (its answer is the first k)."""
    for w in self.warmup_k:
      if w >= k:
        return w
    return min(1 << (k - 1).bit_length(), self.max_k)

  def warmup(self) -> float:
    """Compiles every program a request of a ``warmup_k`` can run (each
    batch bucket; bag-of-words models: each feature width up to
    ``max_features``); returns the seconds."""
    start = time.perf_counter()
    for k in self.warmup_k:
      self.predictor.warmup(k, max_width=self.max_features)
    return time.perf_counter() - start

  def health(self) -> dict:
    """The ``/healthz`` answer."""
    b = self.batcher
    return {"status": "stopping" if self.stopping else "ok",
            "num_classes": int(self.predictor.num_classes),
            "model": self.name, "input": self.parser.kind,
            "label_names": self.predictor.label_names is not None,
            "default_k": self.default_k, "max_k": self.max_k,
            "max_batch": b.max_batch, "max_features": self.max_features,
            "sync_cpu_dispatch": not jax.config.read(
                "jax_cpu_enable_async_dispatch"),
            "served": {"requests": b.requests, "instances": b.instances,
                       "batches": b.batches}}

  def start(self) -> int:
    """Warms up, binds and starts serving in background threads.

    Returns:
      The bound port.
    """
    if self._httpd is not None:
      raise RuntimeError("the server is already started")
    seconds = self.warmup()
    logging.info("compiled k=%s for batch buckets %s in %.1f s",
                 self.warmup_k, self.predictor.batch_sizes, seconds)
    self._httpd = _HTTPServer((self.host, self._requested_port), _Handler)
    self._httpd.app = self
    self.batcher.start()
    self._thread = threading.Thread(
        target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
        name="mhe-http", daemon=True)
    self._thread.start()
    logging.info("serving %s on %s", self.name, self.url)
    return self.port

  def stop(self, timeout: float = 30.0) -> None:
    """Stops accepting, answers what is queued, then ends the threads.

    Requests arriving on open connections afterwards get 503.
    """
    if self._httpd is None or self._stopped.is_set():
      return
    self.stopping = True
    self._httpd.shutdown()
    self._httpd.server_close()
    self.batcher.stop(timeout)
    self._thread.join(timeout)
    self._stopped.set()
    logging.info("stopped %s", self.name)

  def serve_forever(self) -> None:
    """Starts (if needed) and blocks until :meth:`stop` runs elsewhere."""
    if self._httpd is None:
      self.start()
    self._stopped.wait()

  def __enter__(self) -> Server:
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


# ------------------------------------------------------------ the command
def use_sync_cpu_dispatch() -> None:
  """Makes jax run each CPU program on the calling thread, for the process.

  ``jax_cpu_enable_async_dispatch=False``: a one-row request then skips the
  hand-off to jax's worker thread and back, about 25 us of a 79 us
  ``predict_one`` on Delicious MHP (docs/inference.md, "One-request
  latency"). jax reads the setting when it starts its CPU backend, so call
  this before the process's first jax computation.
  """
  jax.config.update("jax_cpu_enable_async_dispatch", False)


def _define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module defines none (a program with its own --workdir can use Server)."""
  flags.DEFINE_string("workdir", None, "Training workdir, or a checkpoint "
                      "directory in it.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default newest).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port; 0 picks a free one (the serving "
                       "line on stdout names it).")
  flags.DEFINE_list("batch_sizes", [str(b) for b in DEFAULT_BATCH_SIZES],
                    "The predictor's jitted batch buckets, all compiled at "
                    "start.")
  flags.DEFINE_integer("max_batch", 0, "Instances per predict call; 0: the "
                       "largest batch bucket.")
  flags.DEFINE_float("max_wait_ms", 2.0, "How long a batch waits for more "
                     "requests after its first (only while others are being "
                     "received).")
  flags.DEFINE_integer("max_request_bytes", 1 << 20, "Largest request body; "
                       "larger ones get 413.")
  flags.DEFINE_integer("max_k", 0, "Largest k a request may ask; 0: "
                       f"min({DEFAULT_MAX_K}, the head's largest k).")
  flags.DEFINE_integer("k", 5, "k of a request that gives none.")
  flags.DEFINE_list("warmup_k", [], "k values compiled at start (default: "
                    "--k); a request runs at the smallest of them >= its k, "
                    "larger k compile on first use.")
  flags.DEFINE_integer("max_features", 0, "Bag-of-words models: the most "
                       "features an instance may hold (more: 400); the "
                       "widths up to it are compiled at start. 0: the "
                       "model's input size.")
  flags.DEFINE_bool("sync_cpu_dispatch", True, "Run each CPU program on the "
                    "calling thread (jax_cpu_enable_async_dispatch=False, "
                    "set before the model loads): about 25 us less per "
                    "one-row request on Delicious MHP.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.sync_cpu_dispatch:
    use_sync_cpu_dispatch()
  try:
    predictor = inference.load(
        f.workdir, step=f.step,
        batch_sizes=tuple(int(b) for b in f.batch_sizes))
    server = Server(
        predictor, host=f.host, port=f.port, max_batch=f.max_batch,
        max_wait_ms=f.max_wait_ms, max_request_bytes=f.max_request_bytes,
        max_k=f.max_k, default_k=f.k,
        warmup_k=[int(k) for k in f.warmup_k] or None,
        max_features=f.max_features or None)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  stop = threading.Event()

  def on_signal(signum, frame):
    del frame
    logging.info("signal %d: shutting down", signum)
    stop.set()

  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, on_signal)
  try:
    server.start()
  except OSError as e:
    raise SystemExit(f"error: cannot listen on {f.host}:{f.port}: {e}"
                     ) from None
  print(f"serving {server.name} on {server.url} (POST {PREDICT_PATH}, "
        f"GET {HEALTH_PATH})", flush=True)
  while not stop.wait(0.5):
    pass
  server.stop()


if __name__ == "__main__":
  _define_flags()
  app.run(main)
