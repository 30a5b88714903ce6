"""Data throughput benchmark: load and batch, in examples per second.

What it times (wall clock, one process, numpy only; nothing goes to a
device):

* ``delicious``: ``formats.read_xc`` of ``delicious/train.txt`` (load), then
  :func:`mhe_jax.data.pipeline.train_loader` over ``--epochs`` epochs of the
  training set (batch ``--batch``, reshuffled every epoch) with each of
  ``--threads`` grain thread counts, and
  :func:`~mhe_jax.data.pipeline.eval_loader` over ``test.txt``. With
  ``--tfds``, also the TF-free TFDS route: build ``mhe_xmc/delicious_bench``
  (array_record, train split) in a temporary directory and read it back with
  :func:`mhe_jax.data.tfds.load_xmc`.
* ``synthetic-multi`` / ``synthetic-single``: ``--synthetic_examples``
  examples over ``--synthetic_classes`` labels (default 1e6) from
  :mod:`mhe_jax.data.synthetic` (generation is the load), then the same train
  loader (``single_label=True`` for the single-label set: labels ``[B]``).

Train loaders are timed twice: drained bare (the pipeline's own ceiling) and
with a simulated ``--step_ms`` blocking training step per batch (a sleep,
which releases the GIL as a device wait does), where prefetch threads can
overlap batch making with the step.

Prints a table and writes ``benchmarks/results/data_throughput.json``.

  python benchmarks/data_throughput.py        # full run, ~30 s on 2 cores
  python benchmarks/data_throughput.py --epochs=1 --synthetic_examples=20000
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Callable

from absl import app
from absl import flags
import ml_collections
import numpy as np

from mhe_jax.data import datasets
from mhe_jax.data import formats
from mhe_jax.data import pipeline
from mhe_jax.data import synthetic

_DATA = flags.DEFINE_string(
    "data_dir", None,
    "Real data directory (holds delicious/); default datasets.data_root's "
    "($MHE_DATA_DIR, else ../shared/data).")
_BATCH = flags.DEFINE_integer("batch", 256, "Global batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Training epochs per timing.")
_THREADS = flags.DEFINE_list("threads", ["0", "1", "2"],
                             "grain thread counts to time the train loader "
                             "with (0: batches made on demand).")
_STEP_MS = flags.DEFINE_float("step_ms", 1.0, "Simulated blocking step per "
                              "batch, in ms, for the second train timing.")
_SYN_N = flags.DEFINE_integer("synthetic_examples", 100_000,
                              "Examples in each synthetic set.")
_SYN_C = flags.DEFINE_integer("synthetic_classes", 1_000_000,
                              "Labels of the synthetic sets.")
_SYN_F = flags.DEFINE_integer("synthetic_features", 2**17,
                              "Features of the synthetic sets.")
_TFDS = flags.DEFINE_bool("tfds", True, "Also time the TFDS build/read route.")
_OUT = flags.DEFINE_string(
    "out",
    str(pathlib.Path(__file__).parent / "results" / "data_throughput.json"),
    "Where to write the JSON results.")


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _drain(it: pipeline.BatchIterator, step_s: float = 0.0) -> int:
  """Consumes batches, sleeping ``step_s`` after each; returns examples."""
  seen = 0
  for batch in it:
    seen += int(batch["mask"].sum())
    if step_s:
      time.sleep(step_s)
  return seen


def _loader_rows(dataset: str, source: pipeline.Source,
                 threads: list[int]) -> list[dict]:
  rows = []
  for step_ms in (0.0, _STEP_MS.value):
    for num_threads in threads:
      it = pipeline.train_loader(source, _BATCH.value, seed=0,
                                 num_epochs=_EPOCHS.value, process_index=0,
                                 process_count=1, num_threads=num_threads)
      seen, sec = _timed(lambda it=it: _drain(it, step_ms / 1e3))
      stage = f"train, {num_threads} threads"
      if step_ms:
        stage += f", {step_ms:g} ms step"
      rows.append(dict(dataset=dataset, stage=stage, examples=seen,
                       seconds=sec, threads=num_threads, step_ms=step_ms))
  return rows


def _delicious(threads: list[int]) -> list[dict]:
  d = datasets.data_root(ml_collections.ConfigDict(
      {"data_dir": _DATA.value or ""})) / "delicious"
  train, sec = _timed(lambda: formats.read_xc(d / "train.txt"))
  rows = [dict(dataset="delicious", stage="read_xc train.txt",
               examples=train.num_examples, seconds=sec)]
  source, sec = _timed(lambda: pipeline.SparseSource(train))
  rows.append(dict(dataset="delicious", stage="SparseSource", examples=len(
      source), seconds=sec, Fmax=source.max_features, Lmax=source.max_labels))
  rows += _loader_rows("delicious", source, threads)
  test = pipeline.SparseSource(formats.read_xc(d / "test.txt"))
  it = pipeline.eval_loader(test, 4 * _BATCH.value, process_index=0,
                            process_count=1)
  seen, sec = _timed(lambda: _drain(it))
  rows.append(dict(dataset="delicious", stage="eval batches (test)",
                   examples=seen, seconds=sec))
  if _TFDS.value:
    # Imported here: only this optional stage needs tensorflow_datasets.
    from mhe_jax.data import tfds as mhe_tfds  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      _, sec = _timed(lambda: mhe_tfds.prepare_xmc(
          "delicious_bench", {"train": d / "train.txt"}, data_dir=tmp))
      rows.append(dict(dataset="delicious", stage="tfds build (train)",
                       examples=train.num_examples, seconds=sec))
      back, sec = _timed(lambda: mhe_tfds.load_xmc(
          "mhe_xmc/delicious_bench", "train", data_dir=tmp))
      assert back.equals(train)
      rows.append(dict(dataset="delicious", stage="tfds load_xmc (train)",
                       examples=back.num_examples, seconds=sec))
  return rows


def _synthetic(threads: list[int]) -> list[dict]:
  n, c, f = _SYN_N.value, _SYN_C.value, _SYN_F.value
  multi, sec = _timed(lambda: synthetic.make_multi_label(
      n, c, f, mean_labels=5, seed=0))
  rows = [dict(dataset="synthetic-multi", stage="make_multi_label",
               examples=n, seconds=sec, classes=c)]
  source = pipeline.SparseSource(multi)
  rows[0].update(Fmax=source.max_features, Lmax=source.max_labels)
  rows += _loader_rows("synthetic-multi", source, threads)
  (single, _), sec = _timed(lambda: synthetic.make_single_label(
      n, c, f, seed=0))
  rows.append(dict(dataset="synthetic-single", stage="make_single_label",
                   examples=n, seconds=sec, classes=c))
  source = pipeline.SparseSource(single, single_label=True)
  rows[-1].update(Fmax=source.max_features, Lmax=1)
  rows += _loader_rows("synthetic-single", source, threads)
  return rows


def main(argv):
  del argv
  threads = [int(t) for t in _THREADS.value]
  rows = _delicious(threads) + _synthetic(threads)
  print(f"{'dataset':<18}{'stage':<30}{'examples':>10}{'seconds':>10}"
        f"{'examples/s':>14}")
  for r in rows:
    r["examples_per_s"] = r["examples"] / r["seconds"]
    print(f"{r['dataset']:<18}{r['stage']:<30}{r['examples']:>10,}"
          f"{r['seconds']:>10.3f}{r['examples_per_s']:>14,.0f}")
  meta = dict(batch=_BATCH.value, epochs=_EPOCHS.value,
              cpu_count=os.cpu_count(), machine=platform.machine(),
              numpy=np.__version__, time=time.strftime("%Y-%m-%d %H:%M"))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
