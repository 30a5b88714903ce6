"""Load test of ``python -m mhe_jax.serve``: requests/s and latency by clients.

Starts the server as a subprocess on a free 127.0.0.1 port (``--port=0``),
then for each ``--clients`` level runs that many client threads in this
process, each with one keep-alive ``http.client`` connection sending
one-instance ``POST /v1/predict`` requests (``k=--k``, rows of the model's
evaluation split in turn) back to back: ``--warmup_seconds`` unmeasured,
then ``--seconds`` measured. It reports completed requests per second, the
p50 / p99 latency of a request (send to the last byte of the answer), and
the mean instances per predict call the server ran (from ``/healthz``), and
for reference ``Predictor.predict`` of one row in this process (no HTTP).
Every answer must be a 200; the server is stopped with SIGTERM at the end.

Without ``--workdir`` it trains a small bag-of-words MHP model (synthetic
data, ``--classes`` labels, 40 steps) in a temporary directory; with it, any
bag-of-words workdir, e.g. Delicious::

  python benchmarks/serve_load.py
  python -m mhe_jax.main --config=configs/delicious.py:head=mhp \\
      --workdir=/tmp/delicious_mhp
  python benchmarks/serve_load.py --workdir=/tmp/delicious_mhp

Rows go into ``--out`` under the model's name (other models' rows are
kept), with the machine, jax version, command and load average. Clients and
server share the machine's cores: on a small CPU the client threads' own
Python work is part of what limits the figures at 64 clients.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import jax
import numpy as np

import mhe_jax
from mhe_jax import config_lib
from mhe_jax import train
from mhe_jax.data import datasets

REPO = pathlib.Path(__file__).resolve().parents[1]

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A trained bag-of-words workdir; default: train a small "
    "synthetic MHP model in a temporary directory.")
_CLASSES = flags.DEFINE_integer("classes", 1000,
                                "Labels of the small synthetic model.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "64"],
                             "Concurrent client levels.")
_SECONDS = flags.DEFINE_float("seconds", 3.0, "Measured seconds per level.")
_WARMUP_SECONDS = flags.DEFINE_float("warmup_seconds", 0.5,
                                     "Unmeasured seconds before each level.")
_K = flags.DEFINE_integer("k", 5, "Labels per request.")
_MAX_WAIT_MS = flags.DEFINE_float("max_wait_ms", 2.0,
                                  "The server's --max_wait_ms.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "serve_load.json"),
    "Results JSON (rows of other models are kept).")


def small_workdir(root: pathlib.Path, num_classes: int) -> pathlib.Path:
  """Trains a small synthetic bag-of-words MHP model into ``root/model``."""
  config = config_lib.override(config_lib.base_config(), {
      "name": f"synthetic_{num_classes}", "data.num_classes": num_classes,
      "data.num_features": 5_000, "data.num_train": 4_096,
      "data.num_test": 1_000, "encoder.embed_dim": 64,
      "encoder.hidden": (64,), "head.type": "mhp", "batch_size": 128,
      "num_train_steps": 40, "checkpoint_every": 0, "log_every": 20},
      where="serve_load")
  workdir = root / "model"
  train.train_and_evaluate(config, workdir)
  return workdir


def request_bodies(workdir: pathlib.Path, k: int) -> list[bytes]:
  """One-instance predict bodies from the workdir's evaluation split."""
  config = config_lib.from_json(workdir / "config.json")
  X = datasets.load_dataset(config.data, config.seed).eval.data.X.tocsr()
  return [json.dumps({"indices": X[i].indices.tolist(),
                      "values": X[i].data.astype(float).tolist(),
                      "k": k}).encode()
          for i in range(min(X.shape[0], 1000))]


def direct_p50_ms(workdir: pathlib.Path, bodies: list[bytes], k: int) -> float:
  """p50 of ``Predictor.predict`` on one row in this process, in ms."""
  predictor = mhe_jax.load(workdir, batch_sizes=(1,))
  predictor.warmup(k)
  rows = [json.loads(b) for b in bodies[:300]]
  rows = [(np.asarray([r["indices"]]), np.asarray([r["values"]], np.float32))
          for r in rows]
  times = []
  for row in rows + rows:
    start = time.perf_counter()
    predictor.predict(row, k)
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times[len(rows):]))


class ServerProcess:
  """``python -m mhe_jax.serve`` on a free 127.0.0.1 port, stopped on exit."""

  def __init__(self, workdir: pathlib.Path, args: list[str]):
    self.command = [sys.executable, "-m", "mhe_jax.serve",
                    f"--workdir={workdir}", "--host=127.0.0.1", "--port=0",
                    *args]
    self.proc = subprocess.Popen(self.command, cwd=REPO, text=True,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
    line = self.proc.stdout.readline()  # printed once it listens
    match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
    if not match:
      self.stop()
      raise RuntimeError(f"the server did not start: {line!r}")
    self.port = int(match.group(1))

  def get(self, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
    try:
      conn.request("GET", path)
      return json.loads(conn.getresponse().read())
    finally:
      conn.close()

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.proc.stdout.close()


def run_level(port: int, bodies: list[bytes], clients: int, seconds: float,
              warmup_seconds: float) -> dict:
  """``clients`` threads posting bodies back to back; measured figures."""
  latencies = [[] for _ in range(clients)]
  errors = [0] * clients
  start_barrier = threading.Barrier(clients + 1)
  times = {}

  def client(i: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    j = i * 7919
    start_barrier.wait()
    try:
      while True:
        now = time.perf_counter()
        if now >= times["end"]:
          return
        body = bodies[j % len(bodies)]
        j += 1
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        done = time.perf_counter()
        if response.status != 200:
          errors[i] += 1
        elif now >= times["measure"]:
          latencies[i].append(done - now)
    finally:
      conn.close()

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  now = time.perf_counter()
  times["measure"] = now + warmup_seconds
  times["end"] = times["measure"] + seconds
  start_barrier.wait()
  for t in threads:
    t.join()
  # Requests that finished after "end" started before it: count what
  # finished in the measured window, over the window's length.
  lat = np.concatenate([np.asarray(l) for l in latencies])
  return {"clients": clients, "requests": int(lat.size),
          "requests_per_s": lat.size / seconds,
          "p50_ms": 1e3 * float(np.percentile(lat, 50)),
          "p99_ms": 1e3 * float(np.percentile(lat, 99)),
          "errors": int(sum(errors))}


def markdown(entry: dict) -> str:
  """One model's table, headed by its settings, machine and command."""
  load = entry["load_average_1_5_15_min"]
  lines = [f"**{entry['model']}**, {entry['num_classes']} labels, "
           f"k={entry['k']}, max_wait_ms={entry['max_wait_ms']}; in-process "
           f"`Predictor.predict` of one row: p50 "
           f"{entry['direct_predict_p50_ms']:.2f} ms. {entry['machine']}, "
           f"jax {entry['jax']}, {entry['date']}, 1-minute load average "
           f"{load['start'][0]:.1f} at start and {load['end'][0]:.1f} at "
           f"end. `{entry['command']}`",
           "",
           "| clients | requests/s | p50 ms | p99 ms | instances per predict "
           "call | errors |",
           "|---:|---:|---:|---:|---:|---:|"]
  for r in entry["levels"]:
    lines.append(f"| {r['clients']} | {r['requests_per_s']:.0f} | "
                 f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                 f"{r['instances_per_call']:.1f} | {r['errors']} |")
  return "\n".join(lines)


def machine() -> str:
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  vm = cpuinfo.exists() and " hypervisor" in cpuinfo.read_text()
  devices = ("no GPU" if jax.default_backend() == "cpu"
             else f"{jax.device_count()} {jax.default_backend()} device(s)")
  return (f"{os.cpu_count()}-core {platform.machine()} "
          f"{'VM ' if vm else ''}CPU, {devices}")


def main(argv):
  del argv
  command = "python " + " ".join(sys.argv)
  load_start = list(os.getloadavg())
  with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
    workdir = (pathlib.Path(_WORKDIR.value) if _WORKDIR.value
               else small_workdir(pathlib.Path(tmp), _CLASSES.value))
    bodies = request_bodies(workdir, _K.value)
    direct = direct_p50_ms(workdir, bodies, _K.value)
    server = ServerProcess(workdir, [f"--k={_K.value}",
                                     f"--max_wait_ms={_MAX_WAIT_MS.value}"])
    try:
      health = server.get("/healthz")
      levels = []
      for clients in (int(c) for c in _CLIENTS.value):
        before = server.get("/healthz")["served"]
        level = run_level(server.port, bodies, clients, _SECONDS.value,
                          _WARMUP_SECONDS.value)
        after = server.get("/healthz")["served"]
        level["instances_per_call"] = (
            (after["instances"] - before["instances"])
            / max(after["batches"] - before["batches"], 1))
        levels.append(level)
        print(f"{clients} clients: {level['requests_per_s']:.0f} requests/s, "
              f"p50 {level['p50_ms']:.2f} ms, p99 {level['p99_ms']:.2f} ms",
              flush=True)
    finally:
      server.stop()
  entry = {"model": health["model"], "num_classes": health["num_classes"],
           "workdir": _WORKDIR.value or "(small synthetic model, trained "
                                        "in a temporary directory)",
           "k": _K.value, "max_wait_ms": _MAX_WAIT_MS.value,
           "max_batch": health["max_batch"], "seconds": _SECONDS.value,
           "direct_predict_p50_ms": direct, "levels": levels,
           "machine": machine(), "jax": jax.__version__,
           "date": time.strftime("%Y-%m-%d"), "command": command,
           "server_command": " ".join(
               ["python", "-m", "mhe_jax.serve", "--workdir=WORKDIR"]
               + server.command[4:]),
           "load_average_1_5_15_min": {"start": load_start,
                                       "end": list(os.getloadavg())}}
  if any(level["errors"] for level in levels):
    raise SystemExit(f"some requests failed: {levels}")
  print(markdown(entry))
  path = pathlib.Path(_OUT.value)
  results = json.loads(path.read_text()) if path.exists() else {"models": {}}
  results["models"][entry["model"]] = entry
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  app.run(main)
