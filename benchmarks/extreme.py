r"""The two real extreme datasets, every row in one run: citeulike-t and Beauty.

citeulike-t (52,946 tags; ``<data root>/citeulike_t``) and Amazon Beauty
next-item prediction (54,542 items; ``<data root>/amazon_beauty``). For each
dataset this trains ``configs/{dataset}.py`` once per head
(``head=vanilla|mhp|mhc|mhs``), once with no argument (method ``best``,
the config as it stands: its default head) and, on citeulike-t, once as
``head=vanilla,fit=least_squares`` (method ``vanilla_ls``: the full
classifier fitted in closed form on the encoder of ``best``) with
:func:`mhe_jax.train.train_and_evaluate` on the test split (a config that
evaluates on validation is refused), and records per row:

* the metrics the trainer returns: citeulike-t P@1/3/5, nDCG@5, PSP@5 (every
  ``@`` key is kept); Beauty full-ranking HR@1/5/10, NDCG@5/10 (input items
  excluded) and ``sampled/HR@10``, ``sampled/NDCG@10`` (target among 100
  popularity-sampled negatives, the original BERT4Rec protocol);
* train seconds (the trainer's, compilation included, evaluation excluded)
  and the whole model's parameter count;
* the classifier cost: the head alone, built by
  :func:`mhe_jax.registry.build_model` from the same config and dataset, on
  random features of the shape it sees per training step (``[batch, d]`` for
  citeulike-t; the ``[batch * max_len, d]`` flattened positions for Beauty,
  with the position mask of a real training batch) and the labels of the
  first training batch: the jitted loss-and-gradient step (no optimiser
  update), its median wall time over ``--cost_repeats`` calls after one
  warm-up call, its compiled memory (``Compiled.memory_analysis()``:
  arguments + outputs + temporaries, as in benchmarks/scale.py) and the
  head's parameter count;
* settings: the config and its argument, ``jax.devices()[0].device_kind``,
  the jax version and the machine.

On citeulike-t the peer libraries of benchmarks/xmc_accuracy.py
(napkinXC PLT, omikuji, PECOS XR-Linear; :func:`xmc_accuracy.run_peer`, the
same tf-idf features and metrics, their default settings) run in the same
command. Beauty gets published rows as constants (method ``published``):
Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really
better than SASRec?", RecSys 2023 (arXiv 2309.07602), the Amazon Beauty table
of the README of github.com/antklen/sasrec-bert4rec-recsys23: HR@10 / NDCG@10
with full ranking over all items, seen items filtered out, on the same
preprocessed BERT4Rec ``beauty.txt``, leave-one-out.

The markdown table marks, per metric, the best MHE-head row (bold; rows whose
head is mhp, mhc or mhs, ``best`` included when its head is one) and the best
peer (italic), and gives the vanilla head's classifier step time over each
MHE head's (both measured in the same run).

  python benchmarks/extreme.py          # both datasets, every row -> JSON, PNG
  python benchmarks/extreme.py --datasets=citeulike_t --methods=mhc,omikuji
  python benchmarks/extreme.py --quick --out=/tmp/extreme.json \
      --plot=/tmp/extreme.png             # runlocal configs, seconds
  python benchmarks/extreme.py --markdown_from=benchmarks/results/extreme.json

``--pecos_python`` (default $MHE_PECOS_PYTHON) names the side interpreter
that runs PECOS, as in benchmarks/xmc_accuracy.py. A run merges its rows into
an existing ``--out`` JSON (the same dataset and method replaced).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
import numpy as np

from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax.data import datasets as datasets_lib
from mhe_jax.data import formats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=g-import-not-at-top,wrong-import-position
import xmc_accuracy  # its flags (--datasets, --methods, --quick, --out, ...)

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATASETS = ("citeulike_t", "amazon_beauty")
HEAD_METHODS = ("vanilla", "vanilla_ls", "mhp", "mhc", "mhs", "best")
METHOD_ARGS = {"vanilla_ls": ["head=vanilla", "fit=least_squares"]}
METHOD_DATASETS = {"vanilla_ls": ("citeulike_t",)}  # where the method applies
MHE_HEADS = ("mhp", "mhc", "mhs")
PEER_METHODS = xmc_accuracy.PEER_METHODS
PEER_DATASETS = ("citeulike_t",)  # the peers are multi-label XMC libraries
COLUMNS = {
    "citeulike_t": ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"),
    "amazon_beauty": ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10",
                      "sampled/HR@10", "sampled/NDCG@10"),
}
PLOT_METRICS = {"citeulike_t": ("P@1", "P@5"),
                "amazon_beauty": ("HR@10", "NDCG@10")}

# Klenitskiy & Vasilev, RecSys 2023: the Amazon Beauty table of the README of
# github.com/antklen/sasrec-bert4rec-recsys23 (HitRate@10, NDCG@10, their
# training seconds on their hardware).
PAPER = ("A. Klenitskiy, A. Vasilev. Turning Dross Into Gold Loss: is "
         "BERT4Rec really better than SASRec? RecSys 2023, pp. 1120-1125 "
         "(arXiv 2309.07602)")
PAPER_REPOSITORY = ("https://github.com/antklen/sasrec-bert4rec-recsys23, "
                    "README.md, 'Main paper results', Amazon Beauty table")
PUBLISHED_PROTOCOL = (
    "full ranking over all items, items of the user's sequence filtered out "
    "(filter_seen), leave-one-out (last item = test), the same preprocessed "
    "BERT4Rec Amazon Beauty file (FeiSun/BERT4Rec data/beauty.txt)")
PUBLISHED = {  # method: (name, HR@10, NDCG@10, their training seconds)
    "sasrec_plus": ("SASRec+ (full softmax CE)", 0.0533, 0.0327, 332),
    "sasrec_plus_3000": ("SASRec+ 3000 (CE, 3000 sampled negatives)", 0.0490,
                         0.0295, 296),
    "bert4rec": ("BERT4Rec", 0.0338, 0.0187, 2325),
    "sasrec_bce": ("SASRec (BCE, 1 negative)", 0.0246, 0.0126, 521),
}

_COST_REPEATS = flags.DEFINE_integer(
    "cost_repeats", 5, "Timed calls of the classifier step (after a warm-up).")

_COST_ONLY = flags.DEFINE_string(
    "cost_only", None, "Train nothing: measure each --methods head's "
    "classifier step (loss + gradient) on --datasets, with the config's "
    "data.train_rows and, where it is set, without it (all B * T rows); "
    "writes this JSON and prints a table.")

DEFAULTS = {  # xmc_accuracy's flags, with this benchmark's defaults
    "datasets": list(DATASETS),
    "methods": list(HEAD_METHODS + PEER_METHODS) + ["published"],
    "out": str(RESULTS / "extreme.json"),
    "plot": str(RESULTS / "extreme.png"),
}


# ------------------------------------------------------------------ configs
def config_arg(method: str, quick: bool) -> str | None:
  """``configs/{dataset}.py``'s argument for a head method."""
  if method not in HEAD_METHODS:
    raise ValueError(f"unknown head method {method!r}; known: {HEAD_METHODS}")
  args = ([] if method == "best" else
          METHOD_ARGS.get(method, [f"head={method}"])) + (
              ["runlocal"] if quick else [])
  return ",".join(args) or None


def load_config(dataset: str, method: str, quick: bool,
                data_dir: str | None = None) -> tuple[Any, str]:
  """``(config, 'configs/{dataset}.py[:arg]')``; refuses a validation config."""
  path = REPO / "configs" / f"{dataset}.py"
  if not path.exists():
    raise ValueError(f"no config {path} for dataset {dataset!r}")
  arg = config_arg(method, quick)
  config = config_lib.from_file(path, arg)
  if data_dir:
    config.data.data_dir = data_dir
  config.checkpoint_every = 0
  name = f"configs/{path.name}" + (f":{arg}" if arg else "")
  check_test_split(config, name)
  return config, name


def check_test_split(config, name: str) -> None:
  """Raises ValueError when ``config`` would evaluate on validation rows."""
  if config.data.validation_fraction > 0:
    raise ValueError(f"{name} evaluates on validation "
                     f"(data.validation_fraction="
                     f"{config.data.validation_fraction}); this benchmark "
                     "reports the test split")


def settings(config_name: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"config": config_name,
          "device_kind": jax.devices()[0].device_kind,
          "jax": jax.__version__,
          "machine": f"{platform.node()} {platform.machine()}, "
                     f"{os.cpu_count()} CPUs, {platform.platform()}"}


# --------------------------------------------------------- classifier cost
def _param_count(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape) for x in
                 jax.tree.leaves(nnx.state(tree, nnx.Param))))


def head_inputs(config, data: datasets_lib.Dataset) -> dict[str, np.ndarray]:
  """What the head sees in one training step, from the first training batch.

  Returns ``labels`` (int ``[B, L]`` multi-label or ``[B]``; sequence data:
  ``[B * T]``, the positions flattened as :class:`mhe_jax.nn.models.Classifier`
  does, compacted to ``data.train_rows`` rows when set) and ``where`` (bool, same rows: the batch mask, and for sequences
  the labelled positions).
  """
  from mhe_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = next(iter(pipeline.train_loader(
      data.train, config.batch_size, seed=config.seed, num_threads=0)))
  labels, where = np.asarray(batch["labels"]), np.asarray(batch["mask"], bool)
  if isinstance(data.train, pipeline.SequenceSource):  # [B, T] targets
    where = (labels >= 0) & where[:, None]
    labels, where = labels.reshape(-1), where.reshape(-1)
    if 0 < config.data.train_rows < labels.shape[0]:
      # The model's compaction (one device): labelled rows first, in order.
      keep = np.argsort(~where, kind="stable")[:config.data.train_rows]
      labels, where = labels[keep], where[keep]
  return {"labels": labels, "where": where}


def classifier_cost(config, data: datasets_lib.Dataset, *,
                    repeats: int = 5) -> dict[str, Any]:
  """The head alone: loss-and-gradient step time, compiled memory, params.

  The model is built as the trainer builds it
  (:func:`mhe_jax.registry.build_model`, one device); its head gets random
  normal features ``[rows, d]`` (``rows`` = the batch, or batch x positions
  for sequence data) with the labels and mask of the first training batch
  (:func:`head_inputs`). The step is ``jax.jit(jax.value_and_grad(loss))``
  over the head's parameters.

  Returns:
    ``classifier_step_seconds`` (median of ``repeats`` calls after one
    warm-up, each blocked on), ``classifier_compile_seconds``,
    ``classifier_memory_bytes`` (arguments + outputs + temporaries of the
    compiled step) and its parts, ``classifier_params``, ``model_params``
    (encoder + head), ``classifier_rows``, ``classifier_labelled_rows``,
    ``classifier_feature_dim``, ``classifier_repeats``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = registry.build_model(config, data, nnx.Rngs(config.seed))
  head = model.head
  dim = int(model.encoder.out_features)
  out = {"model_params": _param_count(model),
         "classifier_params": _param_count(head),
         "classifier_feature_dim": dim}
  inputs = head_inputs(config, data)
  labels, where = inputs["labels"], inputs["where"]
  rows = labels.shape[0]
  x = jax.random.normal(jax.random.key(config.seed), (rows, dim))
  rng = jax.random.key(config.seed + 1)
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  del model, head

  def loss(params, x, labels, where, rng):
    return nnx.merge(graphdef, params, rest).loss(x, labels, rng=rng,
                                                  where=where)

  t0 = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(
      params, x, labels, where, rng).compile()
  out["classifier_compile_seconds"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    parts = {"argument_bytes": int(mem.argument_size_in_bytes),
             "output_bytes": int(mem.output_size_in_bytes),
             "temp_bytes": int(mem.temp_size_in_bytes)}
    out["classifier_memory_bytes"] = sum(parts.values())
    out["classifier_memory"] = parts
  jax.block_until_ready(compiled(params, x, labels, where, rng))  # warm-up
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x, labels, where,
                                   jax.random.fold_in(rng, i)))
    times.append(time.perf_counter() - t0)
  out.update(classifier_step_seconds=float(np.median(times)),
             classifier_repeats=repeats, classifier_rows=int(rows),
             classifier_labelled_rows=int(
                 where.sum() if labels.ndim == 1 else
                 ((labels >= 0).any(axis=1) & where).sum()))
  return out


# -------------------------------------------------------------------- rows
def head_row(method: str, dataset: str, config_name: str, results: dict,
             cost: dict, run: str, fit: str = "gradient") -> dict:
  """The JSON row of one ``train_and_evaluate`` result and its head's cost."""
  if results["eval_split"] != "test":
    raise ValueError(f"{config_name} evaluated on {results['eval_split']!r}, "
                     "not test")
  keep = ("steps", "train_seconds", "compile_seconds",
          "train_examples_per_second", "num_params") + tuple(
              k for k in results if "@" in k)
  return {"dataset": dataset, "method": method, "kind": "mhe_jax",
          "config": config_name, "head": results["head"], "fit": fit,
          "encoder": results["encoder"],
          **{k: results[k] for k in keep if k in results},
          **{k: v for k, v in cost.items() if k != "model_params"},
          "settings": settings(config_name), "run": run}


_DATA_CACHE: dict[str, datasets_lib.Dataset] = {}


def _dataset(config) -> datasets_lib.Dataset:
  """The Dataset of ``config.data`` (loaded once per data config)."""
  key = config.data.to_json() + f"|{config.seed}"
  if key not in _DATA_CACHE:
    _DATA_CACHE[key] = datasets_lib.load_dataset(config.data, config.seed)
  return _DATA_CACHE[key]


def run_head(method: str, dataset: str, *, quick: bool, run: str,
             data_dir: str | None = None, repeats: int = 5) -> dict:
  """Trains ``configs/{dataset}.py:head=method`` and measures its head."""
  from mhe_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  config, name = load_config(dataset, method, quick, data_dir)
  with tempfile.TemporaryDirectory() as workdir:
    results = train_lib.train_and_evaluate(config, workdir)
  cost = classifier_cost(config, _dataset(config), repeats=repeats)
  if cost["model_params"] != results["num_params"]:
    raise AssertionError(f"{name}: the measured model has "
                         f"{cost['model_params']} parameters, the trainer's "
                         f"{results['num_params']}")
  return head_row(method, dataset, name, results, cost, run,
                  fit=config.head.fit)


def peer_row(method: str, dataset: str, train, test, run: str) -> dict:
  row = xmc_accuracy.run_peer(method, dataset, train, test)
  row["run"] = run
  if "skipped" not in row:
    row["machine"] = settings("")["machine"]
  return row


def published_rows(dataset: str) -> list[dict]:
  if dataset != "amazon_beauty":
    return []
  return [{"dataset": dataset, "method": method, "kind": "published",
           "name": name, "HR@10": hr, "NDCG@10": ndcg,
           "published_train_seconds": seconds,
           "protocol": PUBLISHED_PROTOCOL, "citation": PAPER,
           "source": PAPER_REPOSITORY}
          for method, (name, hr, ndcg, seconds) in PUBLISHED.items()]


def merge(results: dict, new_rows: list[dict]) -> dict:
  """``results`` with ``new_rows`` replacing its same (dataset, method) rows."""
  replaced = {(r["dataset"], r["method"]) for r in new_rows}
  rows = [r for r in results.get("rows", [])
          if (r["dataset"], r["method"]) not in replaced] + list(new_rows)
  return {**results, "rows": sorted(rows, key=row_key)}


_ORDER = HEAD_METHODS + PEER_METHODS + tuple(PUBLISHED)


def row_key(row: dict) -> tuple:
  """Datasets, then ours / peers / published, then methods in _ORDER."""
  return (DATASETS.index(row["dataset"]) if row["dataset"] in DATASETS else 99,
          {"mhe_jax": 0, "peer": 1, "published": 2}[row["kind"]],
          _ORDER.index(row["method"]) if row["method"] in _ORDER else 99)


# ------------------------------------------------------------------ output
def row_name(row: dict) -> str:
  if row["kind"] == "published":
    return f"{row['name']} (published)"
  if row["kind"] == "peer":
    return f"{xmc_accuracy.PEER_NAMES.get(row['method'], row['method'])} (peer)"
  config = row["config"].split("/")[-1]
  return f"mhe_jax {row['method']}: {row['head']} (`{config}`)"


def is_mhe(row: dict) -> bool:
  return row["kind"] == "mhe_jax" and row.get("head") in MHE_HEADS


def step_ratio(row: dict, rows: list[dict]) -> float | None:
  """Vanilla classifier step time / this row's, measured in the same run.

  The vanilla row is the one trained the same way (``fit``): gradient steps,
  or the closed-form fit with its squared loss.
  """
  fit = row.get("fit", "gradient")
  vanilla = next((r for r in rows if r["kind"] == "mhe_jax"
                  and r["method"] in ("vanilla", "vanilla_ls")
                  and r.get("fit", "gradient") == fit
                  and r["dataset"] == row["dataset"]), None)
  if (not is_mhe(row) or vanilla is None or vanilla.get("run") != row.get("run")
      or not row.get("classifier_step_seconds")):
    return None
  return vanilla["classifier_step_seconds"] / row["classifier_step_seconds"]


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def _seconds(value) -> str:
  if value is None:
    return "-"
  return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _count(value) -> str:
  return "-" if value is None else f"{value / 1e6:.2f}M"


def best_values(rows: list[dict], columns, pick) -> dict[str, float]:
  """Per column, the largest value among the rows ``pick`` selects."""
  out = {}
  for c in columns:
    values = [r[c] for r in rows if pick(r) and r.get(c) is not None]
    if values:
      out[c] = max(values)
  return out


def markdown_table(results: dict) -> str:
  """One table per dataset; bold: best MHE head, italic: best peer."""
  all_rows = sorted(results["rows"], key=row_key)
  out = []
  for dataset in dict.fromkeys(r["dataset"] for r in all_rows):
    rows = [r for r in all_rows if r["dataset"] == dataset
            and "skipped" not in r]
    columns = COLUMNS.get(dataset) or tuple(
        dict.fromkeys(k for r in rows for k in r if "@" in k))
    best_mhe = best_values(rows, columns, is_mhe)
    best_peer = best_values(rows, columns, lambda r: r["kind"] == "peer")
    out.append(f"| {dataset} (test) | " + " | ".join(columns) +
               " | train s | clf step ms | clf memory MiB | clf params | "
               "params | vanilla/this clf step |")
    out.append("|---|" + "---|" * (len(columns) + 6))
    for r in rows:
      cells = []
      for c in columns:
        cell = _pct(r.get(c))
        if is_mhe(r) and best_mhe.get(c) == r.get(c) and cell != "-":
          cell = f"**{cell}**"
        elif (r["kind"] == "peer" and best_peer.get(c) == r.get(c)
              and cell != "-"):
          cell = f"*{cell}*"
        cells.append(cell)
      step = r.get("classifier_step_seconds")
      mem = r.get("classifier_memory_bytes")
      ratio = step_ratio(r, rows)
      cells += [_seconds(r.get("train_seconds")),
                "-" if step is None else f"{1e3 * step:,.1f}",
                "-" if mem is None else f"{mem / 2**20:,.1f}",
                _count(r.get("classifier_params")), _count(r.get("num_params")),
                "-" if ratio is None else f"{ratio:.1f}x"]
      out.append(f"| {row_name(r)} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Metrics in %. **bold**: best MHE head (mhp / mhc / mhs) per "
               "metric; *italic*: best peer. clf: the head alone, "
               "loss + gradient on random features of the training step's "
               "shape (compiled memory: arguments + outputs + temporaries).")
    if any(r.get("config", "").endswith("runlocal") for r in rows):
      out.append("Rows of `runlocal` configs (--quick) train for seconds: "
                 "their metrics and costs are smoke-test numbers only.")
    if any(r["kind"] == "published" for r in rows):
      out.append(f"Published: {PAPER}; {PAPER_REPOSITORY}; "
                 f"{PUBLISHED_PROTOCOL}.")
    if dataset == "amazon_beauty":
      out.append("HR / NDCG: full ranking, input items excluded; sampled/: "
                 "target among 100 popularity-sampled negatives.")
    configs = sorted({r["settings"]["device_kind"] + ", jax " +
                      r["settings"]["jax"] + ", " + r["settings"]["machine"]
                      for r in rows if r["kind"] == "mhe_jax"})
    for c in configs:
      out.append(f"Measured on: {c}.")
    for r in all_rows:
      if r["dataset"] == dataset and "skipped" in r:
        out.append(f"{r['method']}: skipped ({r['skipped']})")
    out.append("")
  return "\n".join(out)


def plot(results: dict, path: str) -> None:
  """Per dataset: two metrics as bars (top), classifier step time (bottom)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows_all = sorted(results["rows"], key=row_key)
  datasets = list(dict.fromkeys(r["dataset"] for r in rows_all))
  fig, axes = plt.subplots(2, len(datasets), figsize=(6.5 * len(datasets), 8),
                           squeeze=False)
  colors = {"mhe_jax": "tab:blue", "peer": "tab:orange",
            "published": "tab:gray"}
  for j, dataset in enumerate(datasets):
    metrics = PLOT_METRICS.get(dataset, COLUMNS.get(dataset, ())[:2])
    rows = [r for r in rows_all if r["dataset"] == dataset
            and any(r.get(m) is not None for m in metrics)]
    ax = axes[0, j]
    x = np.arange(len(rows))
    for i, (key, hatch) in enumerate(zip(metrics, ("", "//"))):
      ax.bar(x + (i - 0.5) * 0.4, [100 * (r.get(key) or 0) for r in rows], 0.4,
             color=[colors[r["kind"]] for r in rows], hatch=hatch,
             edgecolor="black", linewidth=0.5)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=45, ha="right")
    ax.set_title(f"{dataset} test: {metrics[0]} (plain), {metrics[1]} "
                 "(hatched)", fontsize=10)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1, j]
    ours = [r for r in rows_all if r["dataset"] == dataset
            and r.get("classifier_step_seconds")]
    ax.bar(np.arange(len(ours)),
           [1e3 * r["classifier_step_seconds"] for r in ours],
           color=["tab:red" if r.get("head") == "vanilla" else "tab:blue"
                  for r in ours], edgecolor="black", linewidth=0.5)
    ax.set_xticks(np.arange(len(ours)),
                  [f"{r['method']} ({r['head']})" for r in ours], rotation=45,
                  ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("classifier loss+grad step (ms)")
    ax.set_title(f"{dataset}: the head alone per training step (red: "
                 "vanilla)", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
  fig.legend(handles, list(colors), loc="upper right", ncol=3)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  fig.savefig(path, dpi=90)
  plt.close(fig)


# -------------------------------------------------------------------- main
def collect(datasets, methods, *, quick: bool, run: str,
            data_dir: str | None = None, repeats: int = 5) -> list[dict]:
  """Every requested row of every dataset, in this process."""
  known = HEAD_METHODS + PEER_METHODS + ("published",)
  for method in methods:
    if method not in known:
      raise ValueError(f"--methods: unknown method {method!r}; known: "
                       f"{list(known)}")
  rows = []
  for dataset in datasets:
    if dataset not in DATASETS:
      raise ValueError(f"--datasets: unknown dataset {dataset!r}; known: "
                       f"{list(DATASETS)}")
    xc = None
    for method in methods:
      if dataset not in METHOD_DATASETS.get(method, DATASETS):
        continue
      if method in HEAD_METHODS:
        new = [run_head(method, dataset, quick=quick, run=run,
                        data_dir=data_dir, repeats=repeats)]
      elif method in PEER_METHODS:
        if dataset not in PEER_DATASETS:
          continue
        if xc is None:
          root = datasets_lib.data_root(ml_collections.ConfigDict(
              {"data_dir": data_dir or ""})) / dataset
          xc = (formats.read_xc(root / "train.txt"),
                formats.read_xc(root / "test.txt"))
        new = [peer_row(method, dataset, *xc, run)]
      else:
        new = published_rows(dataset)
      for row in new:
        print({k: v for k, v in row.items() if k in COLUMNS.get(dataset, ())
               + ("dataset", "method", "train_seconds",
                  "classifier_step_seconds", "skipped")}, flush=True)
      rows.extend(new)
  return rows


def citation() -> dict[str, str]:
  return {"amazon_beauty published rows": f"{PAPER}; {PAPER_REPOSITORY}",
          "peers": "benchmarks/xmc_accuracy.py (run_peer)"}


def cost_rows(datasets, methods, *, quick: bool, data_dir: str | None,
              repeats: int) -> list[dict]:
  """The classifier step of every head, as the trainer would build it.

  For a config with ``data.train_rows`` set, a second row measures the same
  head on all ``B * T`` rows (``train_rows=0``), so the table shows what the
  compaction of labelled positions saves.
  """
  rows = []
  for dataset in datasets:
    for method in methods:
      if method not in HEAD_METHODS:
        raise ValueError(f"--cost_only measures heads; got {method!r}")
      if dataset not in METHOD_DATASETS.get(method, DATASETS):
        continue
      config, name = load_config(dataset, method, quick, data_dir)
      for train_rows in dict.fromkeys((config.data.train_rows, 0)):
        config.data.train_rows = train_rows
        cost = classifier_cost(config, _dataset(config), repeats=repeats)
        rows.append({"dataset": dataset, "method": method, "config": name,
                     "train_rows": train_rows, **cost})
        print(f"{dataset} {name} train_rows={train_rows}: "
              f"{1e3 * cost['classifier_step_seconds']:.1f} ms, "
              f"{cost.get('classifier_memory_bytes', 0) / 2**20:.0f} MiB, "
              f"{cost['classifier_rows']} rows", flush=True)
  return rows


def main(argv):
  del argv
  if _COST_ONLY.value:
    rows = cost_rows(FLAGS.datasets, FLAGS.methods, quick=FLAGS.quick,
                     data_dir=FLAGS.data_dir, repeats=_COST_REPEATS.value)
    pathlib.Path(_COST_ONLY.value).write_text(json.dumps(
        {"command": "python " + " ".join(sys.argv),
         "machine": xmc_accuracy.machine(), "rows": rows}, indent=1))
    print(f"wrote {_COST_ONLY.value}")
    return
  if FLAGS.markdown_from:
    print(markdown_table(json.loads(pathlib.Path(FLAGS.markdown_from)
                                    .read_text())))
    return
  out = pathlib.Path(FLAGS.out)
  results = json.loads(out.read_text()) if out.exists() else {"rows": []}
  run = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  results["runs"] = results.get("runs", []) + [{
      "command": "python " + " ".join(sys.argv), "time": run,
      "quick": FLAGS.quick, "machine": xmc_accuracy.machine()}]
  new_rows = collect(FLAGS.datasets, FLAGS.methods, quick=FLAGS.quick,
                     run=run, data_dir=FLAGS.data_dir,
                     repeats=_COST_REPEATS.value)
  results = merge(results, new_rows)
  results["citation"] = citation()
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(markdown_table(results))
  if FLAGS.plot:
    plot(results, FLAGS.plot)
  print(f"wrote {out}" + (f" and {FLAGS.plot}" if FLAGS.plot else ""))


if __name__ == "__main__":
  for _name, _value in DEFAULTS.items():
    FLAGS.set_default(_name, _value)
  app.run(main)
