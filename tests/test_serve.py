"""mhe_jax.serve: the HTTP server's answers against Predictor.predict.

A tiny bag-of-words MHP model is trained once per module (2 steps), and
untrained next-token and item-sequence models are written as the trainer
writes them (as tests/test_inference.py does); each is served on a free 127.0.0.1 port in this process. Good
requests must give exactly the predictor's labels (scores to float32
rounding: a batch of other requests runs at another bucket), bad ones a 4xx
naming the problem, concurrent requests their own rows; after the server's
warmup no request compiles. One test runs ``python -m mhe_jax.serve
--port=0`` as a process (which sets synchronous CPU dispatch; a Server in
this process leaves it off) and stops it with SIGTERM.
"""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading

from absl import flags
import numpy as np
import pytest

from conftest import REPO_ROOT
import mhe_jax
from mhe_jax import config_lib
from mhe_jax import inference
from mhe_jax import model_info
from mhe_jax import serve
from mhe_jax import train
from mhe_jax.data import datasets
import tiny_config

MAX_BYTES = 64 << 10


def _untrained(workdir, config):
  """A workdir holding the initial model (what train writes, minus training)."""
  trainer = train.Trainer(config, workdir)
  trainer.checkpointer.save(0, trainer.init_state(), {})
  trainer.checkpointer.close()
  model_info.write(workdir, config, trainer.data)


def _call(port, method, path, body=None, headers=None, conn=None):
  """(status, JSON answer, response headers) of one request."""
  own = conn is None
  conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  if body is not None and not isinstance(body, bytes):
    body = json.dumps(body).encode()
  try:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else None, response.headers
  finally:
    if own:
      conn.close()


def _instances(X):
  """CSR rows -> the JSON instances of a bag-of-words request."""
  return [{"indices": X[i].indices.tolist(),
           "values": X[i].data.astype(float).tolist()}
          for i in range(X.shape[0])]


def _check(predictions, want, k=None):
  k = k or want.labels.shape[1]
  labels = np.array([p["labels"] for p in predictions])
  scores = np.array([p["scores"] for p in predictions])
  np.testing.assert_array_equal(labels, want.labels[:, :k])
  np.testing.assert_allclose(scores, want.scores[:, :k], rtol=1e-5, atol=1e-6)
  if want.names is None:
    assert all("names" not in p for p in predictions)
  else:
    assert [p["names"] for p in predictions] == want.names[:, :k].tolist()


# ------------------------------------------------------ bag-of-words model
@pytest.fixture(scope="module")
def bow_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mhp")
  config = tiny_config.make(2, 2)
  train.train_and_evaluate(config, workdir)
  X = datasets.load_dataset(config.data, config.seed).eval.data.X.tocsr()
  return workdir, X


@pytest.fixture(scope="module")
def predictor(bow_run):
  return mhe_jax.load(bow_run[0], batch_sizes=(8,))


@pytest.fixture(scope="module")
def server(predictor):
  # A long batching window: concurrent requests surely share predict calls.
  server = serve.Server(predictor, port=0, max_wait_ms=50, max_k=20,
                        max_request_bytes=MAX_BYTES)
  server.start()
  yield server
  server.stop()
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_healthz(server):
  status, answer, _ = _call(server.port, "GET", "/healthz")
  assert status == 200
  assert answer["status"] == "ok" and answer["num_classes"] == 500
  assert answer["model"] == "tiny (mhp)"
  assert answer["input"] == "bag_of_words" and answer["max_k"] == 20
  assert answer["max_features"] == 2000  # the input size
  assert answer["sync_cpu_dispatch"] is False  # Server leaves jax's config


def test_predict_equals_the_predictor(server, predictor, bow_run):
  X = bow_run[1]
  short = np.flatnonzero(np.diff(X.indptr) <= predictor.max_features)
  X = X[short[:6]]  # rows within the warmed feature widths
  want = {k: predictor.predict(X, k) for k in (5, 3)}
  traces = getattr(predictor, "num_traces", None)
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
  for k in (5, 3):  # k=3 runs at the warmed k=5, cut to 3
    status, answer, _ = _call(None, "POST", "/v1/predict",
                              {"instances": _instances(X), "k": k}, conn=conn)
    assert status == 200, answer
    _check(answer["predictions"], want[k])
  # A body without "instances" is one instance; k defaults to 5.
  status, answer, _ = _call(None, "POST", "/v1/predict", _instances(X)[2],
                            conn=conn)
  assert status == 200
  _check(answer["predictions"], inference.Prediction(
      want[5].scores[2:3], want[5].labels[2:3], None))
  # A row longer than the training rows runs at a width warmed at start.
  m = predictor.max_features + 9
  long = {"indices": list(range(0, 3 * m, 3)), "values": [0.5] * m}
  status, answer, _ = _call(None, "POST", "/v1/predict", long, conn=conn)
  assert status == 200
  _check(answer["predictions"], predictor.predict(
      (np.array([long["indices"]]), np.array([long["values"]])), 5))
  if traces is not None:  # no request compiled
    assert predictor.num_traces == traces
  # k above every warmed k: the next power of two, compiled once.
  status, answer, _ = _call(None, "POST", "/v1/predict",
                            {"instances": _instances(X), "k": 7}, conn=conn)
  assert status == 200
  _check(answer["predictions"], predictor.predict(X, 7))
  conn.close()


_OK = {"indices": [1, 5], "values": [1.0, 0.5]}


@pytest.mark.parametrize("body, status, message", [
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    ([_OK], 400, "must be a JSON object"),
    ({"instances": []}, 400, "non-empty list"),
    ({"instances": {"indices": [1]}}, 400, "non-empty list of objects"),
    ({"instances": [_OK, 7]}, 400, "instances[1] must be an object"),
    ({"instances": [_OK], "extra": 1}, 400, "unknown field 'extra'"),
    ({"indices": [1]}, 400, "missing field 'values'"),
    ({"instances": [_OK, {**_OK, "tokens": [1]}]}, 400,
     "instances[1]: unknown field 'tokens'"),
    ({"indices": [1, 2], "values": [1.0]}, 400, "2 indices but 1 values"),
    ({"indices": [1, 2000], "values": [1, 1]}, 400,
     "indices[1]: feature id 2000 is out of range [0, 2000)"),
    ({"instances": [_OK, {"indices": [-1], "values": [1]}]}, 400,
     "instances[1].indices[0]: feature id -1 is out of range"),
    ({"indices": [1.5], "values": [1]}, 400,
     "indices[0] must be an integer feature id, got 1.5"),
    ({"indices": "1 2", "values": [1]}, 400, "indices must be a list"),
    ({"indices": [1], "values": ["a"]}, 400, "values[0] must be a number"),
    (b'{"indices": [1], "values": [NaN]}', 400, "NaN"),
    (b'{"indices": [1], "values": [-Infinity]}', 400, "-Infinity"),
    ({"indices": [1], "values": [1e39]}, 400,
     "values[0] = 1e+39 is not a finite float32"),
    ({"indices": [1], "values": [10**400]}, 400,
     "values[0] = 1000"),
    (b"[" * 50_000, 400, "nests JSON arrays or objects too deeply"),
    ({"indices": [10**30], "values": [1]}, 400,
     "indices[0]: feature id 1000000000000000000000000000000 is out of range"),
    ({"indices": None, "values": []}, 400,
     "indices must be a list of integers, got null"),
    ({**_OK, "k": 0}, 400, "k=0 is out of range [1, 20]"),
    ({**_OK, "k": 21}, 400, "k=21 is out of range [1, 20]"),
    ({**_OK, "k": "5"}, 400, 'k must be an integer, got "5"'),
    ({**_OK, "k": 2.5}, 400, "k must be an integer, got 2.5"),
    ({**_OK, "k": True}, 400, "k must be an integer, got true"),
    ({"indices": [1] * 2001, "values": [1] * 2001}, 400,
     "2001 features, more than the server's limit of 2000 per instance"),
    ({"indices": list(range(MAX_BYTES)), "values": [1] * MAX_BYTES}, 413,
     f"more than the server's limit of {MAX_BYTES}"),
])
def test_bad_predict_requests(server, body, status, message):
  got, answer, _ = _call(server.port, "POST", "/v1/predict", body)
  assert got == status
  assert set(answer) == {"error"} and message in answer["error"], answer


@pytest.mark.parametrize("method, path, status, message", [
    ("GET", "/nope", 404, "no such path '/nope'"),
    ("POST", "/v1/predict/x", 404, "GET /healthz and POST /v1/predict"),
    ("GET", "/v1/predict", 405, "/v1/predict takes POST, not GET"),
    ("POST", "/healthz", 405, "/healthz takes GET, not POST"),
    ("DELETE", "/v1/predict", 405, "takes POST, not DELETE"),
])
def test_bad_paths_and_methods(server, method, path, status, message):
  got, answer, headers = _call(server.port, method, path,
                               {} if method == "POST" else None)
  assert got == status and message in answer["error"]
  if status == 405:
    assert headers["Allow"] in ("GET", "POST")


def test_a_connection_survives_a_bad_request(server):
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
  assert _call(None, "POST", "/v1/predict", b"{", conn=conn)[0] == 400
  assert _call(None, "POST", "/v1/predict", _OK, conn=conn)[0] == 200
  conn.close()


def test_a_post_without_content_length_is_411(server):
  with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = s.makefile("rb").read().decode()
  assert answer.startswith("HTTP/1.1 411")
  assert "a POST needs a Content-Length header" in answer


def test_concurrent_requests_get_their_own_rows(server, predictor, bow_run):
  X = bow_run[1]
  jobs = [(slice(i, i + 1 + i % 3), (1, 3, 5)[i % 3]) for i in range(24)]
  want = [predictor.predict(X[rows], k) for rows, k in jobs]
  before = _call(server.port, "GET", "/healthz")[1]["served"]
  answers = [None] * len(jobs)
  barrier = threading.Barrier(len(jobs))

  def client(i):
    rows, k = jobs[i]
    barrier.wait()
    answers[i] = _call(server.port, "POST", "/v1/predict",
                       {"instances": _instances(X[rows]), "k": k})

  threads = [threading.Thread(target=client, args=(i,))
             for i in range(len(jobs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  for (status, answer, _), w in zip(answers, want):
    assert status == 200, answer
    _check(answer["predictions"], w)
  after = _call(server.port, "GET", "/healthz")[1]["served"]
  assert after["requests"] - before["requests"] == len(jobs)
  assert after["instances"] - before["instances"] == sum(
      r.stop - r.start for r, _ in jobs)
  # Micro-batching: fewer predict calls than requests.
  assert after["batches"] - before["batches"] < len(jobs)


class _Flaky:
  """A predictor whose predict and predict_one fail on any row holding the
  value 1234.5."""

  def __init__(self, predictor):
    self._predictor = predictor

  def __getattr__(self, name):
    return getattr(self._predictor, name)

  def predict(self, features, k):
    if (features[1] == 1234.5).any():
      raise RuntimeError("a bad value")
    return self._predictor.predict(features, k)

  def predict_one(self, indices, values, k):
    if (values == 1234.5).any():
      raise RuntimeError("a bad value")
    return self._predictor.predict_one(indices, values, k=k)


def test_an_internal_error_is_a_500_for_its_request_only(predictor, bow_run):
  X = bow_run[1]
  flaky = serve.Server(_Flaky(predictor), port=0, max_wait_ms=100)
  port = flaky.start()
  bad = {"indices": [13], "values": [1234.5]}
  bodies = [bad] + [{"instances": _instances(X[i:i + 1])} for i in range(5)]
  answers = [None] * len(bodies)
  barrier = threading.Barrier(len(bodies))

  def client(i):
    barrier.wait()
    answers[i] = _call(port, "POST", "/v1/predict", bodies[i])

  threads = [threading.Thread(target=client, args=(i,))
             for i in range(len(bodies))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert answers[0][:2] == (500, {
      "error": "internal error (RuntimeError); see the server log"})
  for i, (status, answer, _) in enumerate(answers[1:]):
    assert status == 200
    _check(answer["predictions"], predictor.predict(X[i:i + 1], 5))
  kept = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  assert _call(None, "GET", "/healthz", conn=kept)[0] == 200
  waiting = threading.Thread(target=flaky.serve_forever)
  waiting.start()
  flaky.stop()
  waiting.join(10)
  assert not waiting.is_alive()
  # An open connection: the stopped server answers 503 and closes it.
  status, answer, headers = _call(None, "POST", "/v1/predict", _OK, conn=kept)
  assert status == 503 and "shutting down" in answer["error"]
  assert headers["Connection"] == "close"
  kept.close()
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(("127.0.0.1", port), timeout=5)


def test_server_arguments_are_checked(predictor):
  with pytest.raises(ValueError, match=r"max_k=501 is not in \[1, 500\]"):
    serve.Server(predictor, max_k=501)
  with pytest.raises(ValueError, match=r"default_k=9 is not in \[1, max_k=8\]"):
    serve.Server(predictor, max_k=8, default_k=9)


def test_importing_the_module_defines_no_flags():
  # A program with its own --workdir or --port flag can import Server.
  assert not any(m.endswith("serve")
                 for m in flags.FLAGS.flags_by_module_dict())


def test_command_line_serves_and_stops_on_sigterm(bow_run):
  proc = subprocess.Popen(
      [sys.executable, "-m", "mhe_jax.serve", f"--workdir={bow_run[0]}",
       "--port=0", "--batch_sizes=8"],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    line = proc.stdout.readline()  # blocks until the server listens
    match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    port = int(match.group(1))
    status, answer, _ = _call(port, "GET", "/healthz")
    assert status == 200 and answer["model"] == "tiny (mhp)"
    assert answer["sync_cpu_dispatch"] is True
    assert _call(port, "POST", "/v1/predict", _OK)[0] == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stdout.close()
    proc.stderr.close()


# ------------------------------------------------------- next-token model
@pytest.fixture(scope="module")
def token_predictor(tmp_path_factory, shared_data):
  workdir = tmp_path_factory.mktemp("tokens")
  config = config_lib.override(tiny_config.get_config(), {
      "data.name": "shakespeare", "data.data_dir": str(shared_data),
      "data.context": 3, "data.min_count": 3,
      "encoder.type": "token_context"}, where="test_serve")
  _untrained(workdir, config)
  return mhe_jax.load(workdir, batch_sizes=(8,))


def test_next_token_model_takes_text_and_token_ids(token_predictor):
  p = token_predictor
  texts = ["O Romeo, Romeo! wherefore art thou", "zzqx", ""]
  ids = p.encode_text(["to be or not to"])[0].tolist()
  with serve.Server(p, port=0) as server:
    status, answer, _ = _call(server.port, "POST", "/v1/predict", {
        "instances": [{"text": t} for t in texts] + [
            {"tokens": ids}, {"tokens": ids[-2:]},
            {"tokens": [7, 8] + ids}], "k": 4})
    assert status == 200, answer
    contexts = np.array([ids, [0] + ids[-2:], ids])  # <unk> = 0 pads left
    want = p.predict(texts, 4)
    rest = p.predict(contexts, 4)
    _check(answer["predictions"], inference.Prediction(
        np.concatenate([want.scores, rest.scores]),
        np.concatenate([want.labels, rest.labels]),
        np.concatenate([want.names, rest.names])))
    assert answer["predictions"][0]["names"] == want.names[0].tolist()
    for body, message in (
        (_OK, "unknown field 'indices'; a next-token model reads 'tokens'"),
        ({"tokens": [1, p.input_size]},
         f"tokens[1]: token id {p.input_size} is out of range"),
        ({"tokens": [1], "text": "a"}, "give either 'tokens' or 'text'"),
        ({"text": ["a"]}, "text must be a string, got a list")):
      status, answer, _ = _call(server.port, "POST", "/v1/predict", body)
      assert status == 400 and message in answer["error"], answer


# ---------------------------------------------------- item-sequence model
@pytest.fixture(scope="module")
def item_predictor(tmp_path_factory):
  root = tmp_path_factory.mktemp("items")
  rng = np.random.default_rng(0)
  lines = [f"{user} {item}" for user in range(1, 161)
           for item in rng.choice(np.arange(1, 301), rng.integers(5, 10),
                                  replace=False)]
  (root / "amazon_beauty").mkdir()
  (root / "amazon_beauty" / "interactions.txt").write_text(
      "\n".join(lines) + "\n")
  config = config_lib.from_file(REPO_ROOT / "configs" / "amazon_beauty.py",
                                "head=mhp,runlocal")
  config.data.data_dir = str(root)
  _untrained(root / "workdir", config)
  return mhe_jax.load(root / "workdir", batch_sizes=(8,))


def test_item_sequence_model_takes_item_lists(item_predictor):
  p = item_predictor
  t = p.max_len
  long = list(range(t + 5))
  rows = np.full((2, t), -1)
  rows[0, -3:] = [4, 9, 2]
  rows[1] = long[-t:]  # the most recent max_len items
  with serve.Server(p, port=0) as server:
    traces = p.num_traces
    status, answer, _ = _call(server.port, "POST", "/v1/predict", {
        "instances": [{"items": [4, 9, 2]}, {"items": long}], "k": 5})
    assert p.num_traces == traces  # Predictor.warmup compiled its buckets
    assert status == 200, answer
    _check(answer["predictions"], p.predict({"items": rows}, 5))
    status, answer, _ = _call(server.port, "POST", "/v1/predict",
                              {"items": [4, 9, 2]})
    assert status == 200
    for body, message in (
        ({"items": []}, "items is empty"),
        ({"items": [1, p.num_classes]},
         f"items[1]: item id {p.num_classes} is out of range "
         f"[0, {p.num_classes})"),
        ({"text": "a"}, "an item-sequence model reads 'items'")):
      status, answer, _ = _call(server.port, "POST", "/v1/predict", body)
      assert status == 400 and message in answer["error"], answer
