"""Accuracy on Bibtex and Delicious: every head, peer XMC libraries, published rows.

For each dataset (official Mulan split, ``../shared/data/{name}/train.txt``,
``test.txt``) this trains ``configs/{dataset}.py:head={method}`` for every
head its ``HEADS`` names (vanilla, mhp, mhc, mhs, best, unidec, lightdxml) with
:func:`mhe_jax.train.train_and_evaluate` on the test split; ``best_ensemble``
trains ``configs/{dataset}.py:head=best`` with ``--ensemble`` seeds (0, 1, ...)
and ranks labels by the sum of the models' head scores (their logits for a
BCE classifier), scored like every other row; its seed-0 member is reported
as the ``best`` row (the config as it stands) instead of a separate run. It then runs the peer
libraries that are installed (the ``peers`` extra) on the same split and the
same features, and adds the published Extreme Classification Repository rows
as constants. Columns: P@1/3/5, nDCG@5, PSP@5 (propensity A=0.55, B=1.5 from
the training labels, as in the trainer), train seconds.

Peers get the tf-idf features our encoder computes (smooth idf of the
training rows, L2-normalised rows: sklearn's ``TfidfTransformer``) and run
with their own default settings (written into each row's ``settings``);
their fit and predict are timed, and their top-5 predictions are scored with
:mod:`mhe_jax.metrics`, exactly like our models.

* napkinXC PLT (``napkinxc.models.PLT``): defaults (hierarchical k-means
  tree of arity 2, <= 100 leaves per node, liblinear logistic loss, C=10,
  weights threshold 0.1, exact tree search).
* omikuji (``omikuji.Model.default_hyper_param()``): Parabel-like defaults
  (3 trees, balanced 2-means, min branch size 100, linear loss type 0 =
  squared hinge, C=1, eps 0.1, weights threshold 0.1), beam 10.
* PECOS XR-Linear (``XLinearModel.train`` defaults, see
  benchmarks/pecos_peer.py): libpecos pins numpy<2 and scipy<1.14, which
  jax>=0.10 cannot use, so it runs in a side virtual environment given by
  ``--pecos_python`` (or $MHE_PECOS_PYTHON): the same tf-idf matrices go
  there as .npz files and its top-5 lists come back. Without one (and
  without an importable ``pecos``) the row says it was skipped.

  python benchmarks/xmc_accuracy.py                    # everything -> JSON, PNG
  python benchmarks/xmc_accuracy.py --datasets=bibtex --methods=vanilla,omikuji
  python benchmarks/xmc_accuracy.py --quick            # runlocal configs, seconds
  python benchmarks/xmc_accuracy.py --markdown_from=benchmarks/results/xmc_accuracy.json

A run merges its rows into an existing ``--out`` JSON (same dataset and
method replaced), so datasets or methods can be (re)run one at a time.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import NamedTuple

from absl import app
from absl import flags
import ml_collections
import numpy as np

from mhe_jax import config_lib
from mhe_jax import knn as knn_lib
from mhe_jax import metrics as metrics_lib
from mhe_jax.data import datasets as datasets_lib
from mhe_jax.data import formats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import pecos_peer  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAD_METHODS = ("vanilla", "mhp", "mhc", "mhs", "best", "unidec", "lightdxml")
ENSEMBLE_METHODS = ("best_ensemble",)  # also writes best, best_ensemble_knn
PEER_METHODS = ("napkinxc_plt", "omikuji", "pecos_xr_linear")
KS = (1, 3, 5)
COLUMNS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")

# best_ensemble_knn: the ensemble's mean sigmoid blended with kNN label votes
# (mhe_jax.knn.label_scores). The settings were chosen on the validation tail of the
# training file by `python benchmarks/xmc_tuning.py --blend
# --config=configs/{dataset}.py:head=best --members=N` over KNN_GRID (the whole
# grid is in that trial's entry of benchmarks/results/xmc_tuning.json); the
# test split never chose them.
KNN_GRID = {"k": (10, 25, 50, 100), "power": (1, 2, 4, 8),
            "weight": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
KNN_BLEND = {
    # 5 members, 128 settings: validation P@1 / P@5 62.7 / 28.9 -> 63.3 / 29.4.
    "bibtex": {"k": 10, "power": 4, "weight": 0.1},
    # 3 members, 128 settings: validation P@1 / P@5 70.9 / 60.0 -> 72.2 / 61.0.
    # (With one 2048 layer and 1600 steps: k=50, sim^8, w=0.4,
    # 69.8 / 58.6 -> 72.6 / 60.0.)
    "delicious": {"k": 100, "power": 8, "weight": 0.2},
}

# Extreme Classification Repository (Bhatia et al., "The extreme
# classification repository: multi-label datasets and code",
# http://manikvarma.org/downloads/XC/XMLRepository.html), published P@1/3/5.
PUBLISHED = {
    "bibtex": {
        "SLEEC": (65.08, 39.64, 28.87),
        "PfastreXML": (63.46, 39.22, 29.14),
    },
    "delicious": {
        "FastXML": (69.61, 64.12, 59.27),
        "PfastreXML": (67.13, 62.33, 58.62),
    },
}
CITATION = ("K. Bhatia, K. Dahiya, H. Jain, P. Kar, A. Mittal, Y. Prabhu, "
            "M. Varma. The Extreme Classification Repository: Multi-label "
            "Datasets and Code. http://manikvarma.org/downloads/XC/"
            "XMLRepository.html")

_DATASETS = flags.DEFINE_list("datasets", ["bibtex", "delicious"], "Datasets.")
_METHODS = flags.DEFINE_list(
    "methods", list(HEAD_METHODS + ENSEMBLE_METHODS + PEER_METHODS)
    + ["published"],
    "Methods: heads of configs/{dataset}.py (head={method}, skipped when "
    "not in its HEADS), peers, 'published'.")
_QUICK = flags.DEFINE_bool("quick", False,
                           "runlocal configs (seconds; numbers meaningless).")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Data root; default $MHE_DATA_DIR or ../shared/data.")
_ENSEMBLE = flags.DEFINE_integer(
    "ensemble", 5, "best_ensemble: models (seeds) averaged.")
_PECOS_PYTHON = flags.DEFINE_string(
    "pecos_python", os.environ.get(pecos_peer.ENV_PYTHON),
    "pecos_xr_linear: a python interpreter (its own venv, numpy<2) that has "
    "libpecos; benchmarks/pecos_peer.py runs there. Default "
    "$MHE_PECOS_PYTHON; unset: pecos must import here.")
_THREADS = flags.DEFINE_integer("threads", 2, "Threads for the peer libraries.")
_MARKDOWN_FROM = flags.DEFINE_string(
    "markdown_from", None, "Only print the tables of a results JSON.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "xmc_accuracy.json"),
    "JSON results (merged into when it exists).")
_PLOT = flags.DEFINE_string(
    "plot", str(REPO / "benchmarks" / "results" / "xmc_accuracy.png"),
    "PNG bar plot of P@1 and P@5; '' to skip.")


def data_root() -> pathlib.Path:
  """--data_dir, else datasets.data_root's ($MHE_DATA_DIR, ../shared/data)."""
  return datasets_lib.data_root(
      ml_collections.ConfigDict({"data_dir": _DATA_DIR.value or ""}))


def load_config(path: pathlib.Path, arg: str | None):
  return config_lib.from_file(path, arg)


def config_arg(dataset: str, method: str,
               quick: bool) -> tuple[pathlib.Path, str] | None:
  """``(configs/{dataset}.py, 'head={method}')`` (``,runlocal`` when
  ``quick``), or None when that module has no such head."""
  path = REPO / "configs" / f"{dataset}.py"
  if not path.exists():
    return None
  spec = importlib.util.spec_from_file_location(f"configs_{dataset}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if method not in module.HEADS:
    return None
  return path, f"head={method}" + (",runlocal" if quick else "")


def config_name(config: str) -> str:
  """A row's ``config`` field as the config's name: ``bibtex_best``.

  A row names the config it ran as ``configs/bibtex.py:head=best`` (with
  ``,runlocal`` under ``--quick``), or, as the rows kept in
  benchmarks/results/xmc_accuracy.json do, by a file per config,
  ``configs/bibtex_best.py`` (``:runlocal``); both give ``bibtex_best``
  (``bibtex_best:runlocal``).
  """
  file, _, arg = config.split("/")[-1].partition(":")
  stem = file.replace(".py", "")
  args = dict(a.partition("=")[::2] for a in arg.split(",") if a)
  name = f"{stem}_{args.pop('head')}" if "head" in args else stem
  return name + "".join(f":{a}" for a in args)


# ------------------------------------------------------------------ scoring
def score_topk(topk: list[list[int]] | np.ndarray, true_labels: np.ndarray,
               label_counts: np.ndarray, num_train: int) -> dict[str, float]:
  """Our metrics (as the trainer computes them) of top-5 label lists.

  ``true_labels`` int ``[N, L]`` -1 padded; ``label_counts`` ``[C]`` and
  ``num_train`` of the training rows give the PSP propensities.
  """
  pred = np.full((len(topk), max(KS)), -1, np.int64)
  for i, row in enumerate(topk):
    row = list(row)[:max(KS)]
    pred[i, :len(row)] = row
  inv_p = metrics_lib.inverse_propensity(label_counts, num_train)
  acc = metrics_lib.XMCMetrics(KS, inv_propensity=inv_p,
                               num_labels=len(label_counts))
  acc.update(pred, true_labels)
  return acc.compute()


def score_dense(scores: np.ndarray, true_labels: np.ndarray,
                label_counts: np.ndarray, num_train: int) -> dict[str, float]:
  """:func:`score_topk` of the top-5 of dense ``[N, C]`` scores (ties: smaller label)."""
  top = np.argsort(-scores, axis=1, kind="stable")[:, :max(KS)]
  return score_topk(top, true_labels, label_counts, num_train)


def score(train: formats.XMCData, test: formats.XMCData,
          topk: list[list[int]]) -> dict[str, float]:
  """:func:`score_topk` of predictions for ``test`` after training on ``train``."""
  counts = np.asarray(train.Y.sum(axis=0)).ravel()
  return score_topk(topk, test.padded_labels(), counts, train.num_examples)


# -------------------------------------------------------------------- peers
def _napkinxc_plt(x_tr, train, x_te, workdir):
  from napkinxc.models import PLT  # pylint: disable=g-import-not-at-top
  model = PLT(str(workdir / "plt"), threads=_THREADS.value, seed=0)
  y_tr = [train.Y.indices[a:b].tolist() for a, b in
          zip(train.Y.indptr[:-1], train.Y.indptr[1:])]
  t0 = time.perf_counter()
  model.fit(x_tr, y_tr)
  fit_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  pred = model.predict(x_te, top_k=max(KS))
  return pred, fit_s, time.perf_counter() - t0, (
      "napkinxc.models.PLT defaults: hierarchicalKmeans tree, arity 2, "
      "max_leaves 100, liblinear log loss, C=10, eps 0.1, weights threshold "
      "0.1, exact search")


def _omikuji(x_tr, train, x_te, workdir):
  import omikuji  # pylint: disable=g-import-not-at-top
  path = workdir / "omikuji_train.txt"
  # omikuji's reader fails on a row without features (citeulike-t has 24);
  # such rows carry nothing a linear node could learn from, so they are left
  # out of its training file.
  rows = np.flatnonzero(np.diff(x_tr.indptr) > 0)
  formats.write_xc(formats.XMCData(x_tr[rows], train.Y[rows]), path)
  hp = omikuji.Model.default_hyper_param()
  t0 = time.perf_counter()
  model = omikuji.Model.train_on_data(str(path), hp,
                                      n_threads=_THREADS.value)
  fit_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  pred = []
  for a, b in zip(x_te.indptr[:-1], x_te.indptr[1:]):
    pairs = list(zip(x_te.indices[a:b].tolist(), x_te.data[a:b].tolist()))
    pred.append([label for label, _ in model.predict(pairs, top_k=max(KS))])
  settings = ", ".join(f"{k}={getattr(hp, k)}" for k in (
      "n_trees", "cluster_k", "min_branch_size", "max_depth", "linear_loss_type",
      "linear_c", "linear_eps", "linear_max_iter", "linear_weight_threshold"))
  return pred, fit_s, time.perf_counter() - t0, (
      f"omikuji.Model.default_hyper_param(): {settings}; beam 10; training "
      "rows without features left out")


def pecos_python() -> str | None:
  """--pecos_python (default $MHE_PECOS_PYTHON), also before flags parse."""
  return pecos_peer.side_python(_PECOS_PYTHON)


def _pecos(x_tr, train, x_te, workdir):
  """PECOS XR-Linear (benchmarks/pecos_peer.py), in-process or --pecos_python."""
  del workdir
  python = pecos_python()
  if python:
    topk, timing = pecos_peer.run_side(python, x_tr, train.Y, x_te, max(KS))
    fit_s, predict_s = timing["fit_seconds"], timing["predict_seconds"]
    where = f"; run by {pecos_peer.describe_side(python, timing)}"
  else:
    topk, fit_s, predict_s = pecos_peer.train_predict(x_tr, train.Y, x_te,
                                                      max(KS))
    where = ""
  pred = [[int(c) for c in row if c >= 0] for row in topk]
  return pred, fit_s, predict_s, pecos_peer.SETTINGS + where


PEERS = {"napkinxc_plt": ("napkinxc", _napkinxc_plt),
         "omikuji": ("omikuji", _omikuji),
         "pecos_xr_linear": ("pecos", _pecos)}


def run_peer(method: str, dataset: str, train, test) -> dict:
  module, fn = PEERS[method]
  if not (method == "pecos_xr_linear" and pecos_python()):
    try:
      __import__(module)
    except Exception as e:  # pylint: disable=broad-except
      hint = (" (give --pecos_python, see benchmarks/pecos_peer.py)"
              if module == "pecos" else "")
      return {"dataset": dataset, "method": method, "kind": "peer",
              "skipped": f"{module} not importable: {type(e).__name__}: "
                         f"{e}{hint}"}
  x_tr, x_te = knn_lib.tfidf(train.X, train.X), knn_lib.tfidf(train.X, test.X)
  with tempfile.TemporaryDirectory() as workdir:
    pred, fit_s, predict_s, settings = fn(x_tr, train, x_te,
                                          pathlib.Path(workdir))
  return {"dataset": dataset, "method": method, "kind": "peer",
          "settings": settings, "train_seconds": fit_s,
          "predict_seconds": predict_s, **score(train, test, pred)}


def run_config(method: str, dataset: str) -> dict | None:
  from mhe_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  found = config_arg(dataset, method, _QUICK.value)
  if found is None:
    return None
  path, arg = found
  config = load_config(path, arg)
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  config.checkpoint_every = 0
  with tempfile.TemporaryDirectory() as workdir:
    results = train_lib.train_and_evaluate(config, workdir)
  return config_row(method, dataset, path, arg, results)


def config_row(method: str, dataset: str, path: pathlib.Path, arg: str,
               results: dict) -> dict:
  """The table row of one ``train_and_evaluate`` result on the test split."""
  if results["eval_split"] != "test":
    raise ValueError(f"{path}:{arg} evaluates on {results['eval_split']!r}, "
                     "not test")
  keep = ("steps", "train_seconds", "compile_seconds", "num_params",
          "train_examples_per_second") + tuple(
              k for k in results if "@" in k)
  return {"dataset": dataset, "method": method, "kind": "mhe_jax",
          "config": f"configs/{path.name}:{arg}",
          "head": results["head"], **{k: results[k] for k in keep}}


def _eval_scores(trainer, state) -> tuple[np.ndarray, np.ndarray]:
  """Dense ``[N, C]`` scores of the eval split and its ``[N, L]`` labels."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mhe_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = trainer.data.num_classes
  model, _ = nnx.merge(trainer.graphdef, trainer.eval_state(state))
  topk = jax.jit(lambda m, b: m.topk(b, c))
  rows, labels = [], []
  for batch in pipeline.eval_loader(trainer.data.eval,
                                    trainer.config.eval_batch_size,
                                    num_threads=0):
    with jax.set_mesh(trainer.mesh):
      scores_bk, labels_bk = topk(model, trainer.device_batch(batch))
    scores_bk, labels_bk = np.asarray(scores_bk), np.asarray(labels_bk)
    dense = np.full((len(labels_bk), c), -np.inf, np.float32)
    np.put_along_axis(dense, labels_bk, scores_bk, axis=1)
    mask = np.asarray(batch["mask"])
    rows.append(dense[mask])
    labels.append(np.asarray(batch["labels"])[mask])
  return np.concatenate(rows), np.concatenate(labels)


class Ensemble(NamedTuple):
  """What :func:`ensemble` measured on the config's eval split."""
  metrics: dict[str, float]  # ranking by the summed logits
  seconds: float             # summed training loops
  members: list[dict]        # each member's own train_and_evaluate results
  probs: np.ndarray          # float32 [N, C] mean of the members' sigmoids
  labels: np.ndarray         # int [N, L] -1 padded true labels
  train: formats.XMCData     # the rows the members trained on
  eval: formats.XMCData      # the rows scored (test, or the validation tail)
  label_counts: np.ndarray   # [C] training label frequencies (PSP)

  def score(self, scores: np.ndarray) -> dict[str, float]:
    """Metrics of dense ``[N, C]`` scores of the eval rows (:func:`score_dense`)."""
    return score_dense(scores, self.labels, self.label_counts,
                       self.train.num_examples)


def ensemble(config, seeds) -> Ensemble:
  """Trains ``config`` once per seed; scores the sum of the head scores.

  The members' head scores are BCE logits (the ``head=best`` configs use
  the vanilla head); :attr:`Ensemble.probs` averages their sigmoids for
  :func:`blend`. ``config.data.validation_fraction`` > 0 trains on the head
  of the training file and scores its tail.
  """
  from mhe_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  total, probs, seconds, members = None, None, 0.0, []
  for seed in seeds:
    config = config.copy_and_resolve_references()
    config.seed = int(seed)
    config.checkpoint_every = 0
    with tempfile.TemporaryDirectory() as workdir:
      results = train_lib.train_and_evaluate(config, workdir)
      seconds += results["train_seconds"]
      trainer = train_lib.Trainer(config, workdir)
      _, state, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
      scores, labels = _eval_scores(trainer, state)
      trainer.checkpointer.close()
    members.append(results)
    print(f"ensemble member seed {seed}: P@1 {results['P@1']:.4f} "
          f"P@5 {results['P@5']:.4f}", flush=True)
    total = scores if total is None else total + scores
    member_probs = 1.0 / (1.0 + np.exp(-scores))
    probs = member_probs if probs is None else probs + member_probs
  metrics = score_dense(total, labels, trainer.data.label_counts,
                        trainer.data.num_train)
  return Ensemble(metrics, seconds, members, probs / len(members), labels,
                  trainer.data.train.data, trainer.data.eval.data,
                  trainer.data.label_counts)


# -------------------------------------------------------------- kNN blend
def blend_grid(run: Ensemble, grid: dict = None) -> list[dict]:
  """P@1/3/5 of every (k, power, weight) of ``grid`` on ``run``'s eval rows."""
  grid = grid or KNN_GRID
  # One search for the largest k: its first k columns are the k nearest.
  sims, ids = knn_lib.neighbours(run.train, run.eval.X, max(grid["k"]))
  out = []
  for k in grid["k"]:
    for power in grid["power"]:
      votes = knn_lib.votes((sims[:, :k], ids[:, :k]), run.train.Y, power)
      for weight in grid["weight"]:
        m = run.score(knn_lib.blend(run.probs, votes, weight))
        out.append({"k": k, "power": power, "weight": weight,
                    **{key: m[key] for key in ("P@1", "P@3", "P@5")}})
  return out


def best_of_grid(grid_rows: list[dict]) -> dict:
  """The setting with the highest P@1 + P@5 (first wins ties)."""
  return max(grid_rows, key=lambda r: r["P@1"] + r["P@5"])


def run_ensemble(dataset: str) -> list[dict]:
  """``configs/{dataset}.py:head=best`` trained with seeds 0..n-1.

  Returns the 'best' row (the seed-0 member, which is the config as it
  stands), the ensemble's row (summed logits) and, for a dataset in
  :data:`KNN_BLEND`, the same members blended with kNN label votes at the
  setting chosen on validation.
  """
  found = config_arg(dataset, "best", _QUICK.value)
  if found is None:
    return []
  path, arg = found
  config = load_config(path, arg)
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  if config.seed != 0:
    raise ValueError(f"{path}:{arg}: best_ensemble expects seed 0, got "
                     f"{config.seed}")
  run = ensemble(config, range(_ENSEMBLE.value))
  name = f"configs/{path.name}:{arg}"
  members = [{k: m[k] for k in COLUMNS + ("train_seconds",)}
             for m in run.members]
  rows = [config_row("best", dataset, path, arg, run.members[0]),
          {"dataset": dataset, "method": "best_ensemble", "kind": "mhe_jax",
           "config": name,
           "settings": f"sum of the head scores of {_ENSEMBLE.value} models "
                       f"trained with seeds 0..{_ENSEMBLE.value - 1}",
           "train_seconds": run.seconds, "members": members, **run.metrics}]
  if dataset in KNN_BLEND:
    setting = KNN_BLEND[dataset]
    t0 = time.perf_counter()
    votes = knn_lib.label_scores(run.train, run.eval.X, setting["k"],
                                 setting["power"])
    knn_s = time.perf_counter() - t0
    rows.append({
        "dataset": dataset, "method": "best_ensemble_knn", "kind": "mhe_jax",
        "config": name,
        "settings": f"(1 - w) * mean sigmoid of the {_ENSEMBLE.value} "
                    f"best_ensemble models + w * kNN label votes (cosine on "
                    f"tf-idf, k={setting['k']}, sim^{setting['power']}), "
                    f"w={setting['weight']}; chosen on validation "
                    "(benchmarks/xmc_tuning.py --blend)",
        "knn": setting, "knn_seconds": knn_s,
        "train_seconds": run.seconds, "members": members,
        **run.score(knn_lib.blend(run.probs, votes, setting["weight"]))})
  return rows


def published_rows(dataset: str) -> list[dict]:
  return [{"dataset": dataset, "method": name, "kind": "published",
           "citation": CITATION,
           **{f"P@{k}": v / 100 for k, v in zip(KS, row)}}
          for name, row in PUBLISHED.get(dataset, {}).items()]


# ------------------------------------------------------------------- output
PEER_NAMES = {"napkinxc_plt": "napkinXC PLT", "omikuji": "omikuji",
              "pecos_xr_linear": "PECOS XR-Linear"}


def _fmt(row: dict, key: str) -> str:
  value = row.get(key)
  if value is None:
    return "-"
  if key.endswith("seconds"):
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
  # P@k with the published rows' two decimals (the best rows come within
  # hundredths of them); nDCG / PSP with one.
  return f"{100 * value:.2f}" if key.startswith("P@") else f"{100 * value:.1f}"


def row_name(row: dict) -> str:
  if row["kind"] == "published":
    return f"{row['method']} (published)"
  if row["kind"] == "peer":
    return f"{PEER_NAMES.get(row['method'], row['method'])} (peer)"
  config = config_name(row.get("config", ""))
  if row["method"] == "best_ensemble":
    return (f"mhe_jax `{config}`, ensemble of {len(row.get('members', []))} "
            "seeds")
  if row["method"] == "best_ensemble_knn":
    knn = row["knn"]
    return (f"mhe_jax `{config}`, ensemble of {len(row.get('members', []))} "
            f"seeds + kNN (k={knn['k']}, w={knn['weight']})")
  return f"mhe_jax {row.get('head', row['method'])} (`{config}`)"


_ORDER = ("vanilla", "mhp", "mhc", "mhs", "unidec", "lightdxml", "best",
          "best_ensemble", "best_ensemble_knn") + PEER_METHODS


def row_key(row: dict) -> tuple:
  """Datasets, then ours / peers / published, then methods in _ORDER."""
  datasets = ("bibtex", "delicious")
  return (datasets.index(row["dataset"]) if row["dataset"] in datasets else 99,
          {"mhe_jax": 0, "peer": 1, "published": 2}[row["kind"]],
          _ORDER.index(row["method"]) if row["method"] in _ORDER else 99)


def markdown_table(results: dict) -> str:
  results = {**results, "rows": sorted(results["rows"], key=row_key)}
  out = []
  for dataset in dict.fromkeys(r["dataset"] for r in results["rows"]):
    rows = [r for r in results["rows"]
            if r["dataset"] == dataset and "skipped" not in r]
    out.append(f"| {dataset} (test) | " + " | ".join(COLUMNS) +
               " | train s |")
    out.append("|---|" + "---|" * (len(COLUMNS) + 1))
    for r in rows:
      out.append(f"| {row_name(r)} | " + " | ".join(
          _fmt(r, c) for c in COLUMNS + ("train_seconds",)) + " |")
    for r in results["rows"]:
      if r["dataset"] == dataset and "skipped" in r:
        out.append(f"\n{r['method']}: skipped ({r['skipped']})")
    out.append("")
  return "\n".join(out)


def plot(results: dict, path: str) -> None:
  results = {**results, "rows": sorted(results["rows"], key=row_key)}
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  datasets = list(dict.fromkeys(r["dataset"] for r in results["rows"]))
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5),
                           squeeze=False)
  colors = {"mhe_jax": "tab:blue", "peer": "tab:orange",
            "published": "tab:gray"}
  for ax, dataset in zip(axes[0], datasets):
    rows = [r for r in results["rows"]
            if r["dataset"] == dataset and "P@1" in r]
    x = np.arange(len(rows))
    for j, (key, hatch) in enumerate((("P@1", ""), ("P@5", "//"))):
      ax.bar(x + (j - 0.5) * 0.4, [100 * r[key] for r in rows], 0.4,
             color=[colors[r["kind"]] for r in rows], hatch=hatch,
             edgecolor="black", linewidth=0.5, label=key)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=45, ha="right")
    ax.set_title(f"{dataset}: P@1 (plain) and P@5 (hatched), test split")
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
  fig.legend(handles, list(colors), loc="upper right", ncol=3)
  fig.tight_layout(rect=(0, 0, 1, 0.93))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "processor": platform.machine(),
          "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
          "jax": jax.__version__, "devices": str(jax.devices()),
          "python": sys.version.split()[0]}


def main(argv):
  del argv
  if _MARKDOWN_FROM.value:
    print(markdown_table(json.loads(pathlib.Path(_MARKDOWN_FROM.value)
                                    .read_text())))
    return
  out = pathlib.Path(_OUT.value)
  results = json.loads(out.read_text()) if out.exists() else {"rows": []}
  results["runs"] = results.get("runs", [])
  results["runs"].append({
      "command": "python " + " ".join(sys.argv),
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"), "machine": machine()})
  new_rows = []
  for dataset in _DATASETS.value:
    root = data_root() / dataset
    train = formats.read_xc(root / "train.txt")
    test = formats.read_xc(root / "test.txt")
    for method in _METHODS.value:
      if method == "best" and "best_ensemble" in _METHODS.value:
        continue  # the ensemble's seed-0 member is this row
      if method in HEAD_METHODS:
        row = run_config(method, dataset)
      elif method in PEERS:
        row = run_peer(method, dataset, train, test)
      elif method == "best_ensemble":
        rows = run_ensemble(dataset)
        if rows:
          for row in rows:
            print({k: v for k, v in row.items() if k in COLUMNS + (
                "method", "train_seconds")}, flush=True)
          new_rows.extend(rows)
        continue
      elif method == "published":
        new_rows.extend(published_rows(dataset))
        continue
      else:
        raise ValueError(f"--methods: unknown method {method!r}; known: "
                         f"{HEAD_METHODS + ENSEMBLE_METHODS + tuple(PEERS)}"
                         " and 'published'")
      if row is not None:
        print({k: v for k, v in row.items() if k in COLUMNS + (
            "method", "dataset", "train_seconds", "skipped")}, flush=True)
        new_rows.append(row)
  replaced = {(r["dataset"], r["method"]) for r in new_rows}
  kept = [r for r in results["rows"]
          if (r["dataset"], r["method"]) not in replaced]
  rows = kept + new_rows
  rows.sort(key=row_key)
  results["rows"] = rows
  results["quick"] = _QUICK.value
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1))
  print(markdown_table(results))
  if _PLOT.value:
    plot(results, _PLOT.value)
    print(f"wrote {out} and {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
