r"""Accuracy cost of MHS's sparse classifier update on real data sets.

Trains an MHS config of ``configs/`` with the dense optimiser update of
the whole classifier (``head.sparse_update=False``) and with the sparse
update of the sampled rows only (``head.sparse_update=True``: the lazy form
of the config's optimiser, or of the classifier's own rule,
:class:`mhe_jax.nn.mhs.SparseUpdateOptimizer`), everything else equal, and
evaluates each on a validation split carved
from the training data (``data.validation_fraction``), never on the test
split. Each run is ``python -m mhe_jax.main`` in its own process; the JSON
keeps its exact command, metrics and seconds (wall clock of the process and
the trainer's train loop).

Settings (``SETTINGS``): ``DATASET/UPDATE`` (``UPDATES``: ``dense``,
``sparse``, ``sparse_momentum``, ``sparse_sgd``) for
``shakespeare`` (``configs/shakespeare.py:head=mhs``, 600 steps of 256,
adam; validation = the last 10% of the training stream), ``citeulike_t``
(``configs/citeulike_t.py:head=mhs``, 1,200 steps of 128, adam; validation
= 20% of the training articles, as the config's tuning) and
``amazon_beauty`` (``configs/amazon_beauty.py:head=mhs`` cut to 1,500 of
its 20,000 steps, adam 1e-3 constant; validation = each user's
second-to-last item).

  python benchmarks/sparse_update_accuracy.py --settings=shakespeare/dense,shakespeare/sparse --merge
  python benchmarks/sparse_update_accuracy.py --markdown_from=benchmarks/results/sparse_update_accuracy.json
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# dataset -> (config argument, overrides selecting its validation split,
# metrics shown in the table; the JSON keeps every metric)
DATASETS = {
    "shakespeare": ("configs/shakespeare.py:head=mhs",
                    {"data.validation_fraction": 0.1}, ("acc@1", "acc@5")),
    "citeulike_t": ("configs/citeulike_t.py:head=mhs",
                    {"data.validation_fraction": 0.2}, ("P@1", "P@3", "P@5")),
    "amazon_beauty": ("configs/amazon_beauty.py:head=mhs",
                      {"data.validation_fraction": 0.1,
                       "num_train_steps": 1500},
                      ("HR@10", "NDCG@10")),
}
# results.json keys that are not metrics
_NOT_METRICS = ("config", "dataset", "eval_split", "head", "encoder",
                "num_classes", "multilabel", "steps", "train_seconds",
                "compile_seconds", "train_examples_per_second", "num_params",
                "num_devices", "num_processes")
# update -> overrides. dense / sparse: the config's optimiser (adam) on the
# whole classifier / lazy Adam on the sampled rows. sparse_momentum /
# sparse_sgd: the classifier's own rule on the sampled rows, lazy momentum
# SGD or plain SGD (exactly dense SGD), at one untuned rate each (momentum
# 0.9 at 0.05, SGD at 0.5: the same step size once momentum has built up).
UPDATES = {
    "dense": {"head.sparse_update": False},
    "sparse": {"head.sparse_update": True},
    "sparse_momentum": {"head.sparse_update": True,
                        "optimizer.classifier": "sgd_momentum",
                        "optimizer.classifier_learning_rate": 0.05},
    "sparse_sgd": {"head.sparse_update": True,
                   "optimizer.classifier": "sgd",
                   "optimizer.classifier_learning_rate": 0.5},
}
_DESCRIBE = {"dense": "dense adam", "sparse": "sparse: lazy adam",
             "sparse_momentum": "sparse: lazy momentum, lr 0.05",
             "sparse_sgd": "sparse: sgd, lr 0.5"}
SETTINGS = tuple(f"{d}/{u}" for d in DATASETS for u in UPDATES)

_SETTINGS = flags.DEFINE_list(
    "settings", ["shakespeare/dense", "shakespeare/sparse"],
    f"Which settings to run, of {list(SETTINGS)}.")
_OUT = flags.DEFINE_string(
    "out", str(RESULTS / "sparse_update_accuracy.json"), "JSON to write.")
_MERGE = flags.DEFINE_bool(
    "merge", False, "Replace the settings run in --out's JSON, keep the rest.")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Print the table of this JSON and exit.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Parent of the runs' workdirs (default: a temporary "
    "directory, removed after).")


def command(setting: str, workdir: str) -> list[str]:
  """The ``mhe_jax.main`` command line of a setting."""
  dataset, update = setting.split("/")
  config, overrides, _ = DATASETS[dataset]
  args = [sys.executable, "-m", "mhe_jax.main", f"--config={config}",
          f"--workdir={workdir}", "--fresh"]
  for key, value in {**overrides, **UPDATES[update]}.items():
    args.append(f"--config.{key}={value}")
  return args


def run(setting: str, parent: str) -> dict:
  """Trains and evaluates one setting; its row of the JSON."""
  workdir = os.path.join(parent, setting.replace("/", "_"))
  args = command(setting, workdir)
  t0 = time.perf_counter()
  subprocess.run(args, cwd=REPO, check=True)
  seconds = time.perf_counter() - t0
  results = json.loads(pathlib.Path(workdir, "results.json").read_text())
  metrics = {k: v for k, v in results.items() if k not in _NOT_METRICS}
  shown = ["python"] + [a.replace(workdir, "/tmp/" + os.path.basename(
      workdir)) for a in args[1:]]
  return dict(setting=setting, command=shlex.join(shown), metrics=metrics,
              eval_split=results["eval_split"], steps=results["steps"],
              train_seconds=results["train_seconds"],
              compile_seconds=results["compile_seconds"],
              wall_seconds=seconds)


def markdown_table(results: dict) -> str:
  """One row per data set and update: its metrics (%), each one's
  difference from the dense update in points, and the train loop's
  seconds."""
  rows = {r["setting"]: r for r in results["rows"]}
  lines = ["| data set (validation) | classifier update | metrics (%) | "
           "vs dense (points) | train loop s |", "|---|---|---|---|---|"]
  for dataset in DATASETS:
    dense = rows.get(f"{dataset}/dense")
    for update in UPDATES:
      r = rows.get(f"{dataset}/{update}")
      if r is None:
        continue
      names = [n for n in DATASETS[dataset][2] if n in r["metrics"]]
      vals = ", ".join(f"{n} {r['metrics'][n] * 100:.2f}" for n in names)
      delta = "-" if dense is None or update == "dense" else ", ".join(
          f"{(r['metrics'][n] - dense['metrics'][n]) * 100:+.2f}"
          for n in names)
      lines.append(f"| {dataset} | {_DESCRIBE[update]} | {vals} | {delta} | "
                   f"{r['train_seconds']:,.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:
    print(markdown_table(json.loads(
        pathlib.Path(_MARKDOWN_FROM.value).read_text())))
    return
  unknown = set(_SETTINGS.value) - set(SETTINGS)
  if unknown:
    raise app.UsageError(f"unknown settings {sorted(unknown)}; known: "
                         f"{list(SETTINGS)}")
  out = pathlib.Path(_OUT.value)
  results = (json.loads(out.read_text()) if _MERGE.value and out.exists()
             else dict(meta={}, rows=[]))
  with tempfile.TemporaryDirectory() as tmp:
    parent = _WORKDIR.value or tmp
    for setting in _SETTINGS.value:
      row = run(setting, parent)
      row.update(machine=platform.machine(), cpu_count=os.cpu_count(),
                 load_average=os.getloadavg(),
                 time=time.strftime("%Y-%m-%d %H:%M"))
      results["rows"] = [r for r in results["rows"]
                         if r["setting"] != setting] + [row]
      results["rows"].sort(key=lambda r: SETTINGS.index(r["setting"]))
      results["meta"] = dict(
          benchmark="sparse_update_accuracy",
          note="validation splits only; one run per setting")
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(results, indent=1))
      print(json.dumps(row), flush=True)
  print(markdown_table(results))


if __name__ == "__main__":
  app.run(main)
