"""Validation-only tuning trials for the Bibtex / Delicious configs.

Each trial is a config module plus overrides, trained with
``data.validation_fraction`` (the last fraction of the *training* file is
held out and evaluated; the test file is never read for scores). Every trial
is appended to ``benchmarks/results/xmc_tuning.json`` with its settings,
validation P@1/P@3/P@5 and train seconds, so the README can say what was
tuned and how.

  python benchmarks/xmc_tuning.py --config=configs/bibtex.py:head=vanilla \
      --set=encoder.hidden=() --set=encoder.embed_dim=1024
  python benchmarks/xmc_tuning.py --config=configs/bibtex.py:head=best --members=5
  python benchmarks/xmc_tuning.py --config=configs/bibtex.py:head=best --members=5 \
      --blend   # + kNN label votes: the blend grid, best setting logged
  python benchmarks/xmc_tuning.py --markdown   # the trial log as a table
"""

from __future__ import annotations

import ast
import datetime
import json
import pathlib
import platform
import tempfile

from absl import app
from absl import flags

from mhe_jax import config_lib
import xmc_accuracy  # benchmarks/ is on the path when run as a script

_PEER = flags.DEFINE_string(
    "peer", None, "Instead of a config: score this peer of xmc_accuracy "
    "(napkinxc_plt | omikuji) on --dataset's validation split, as a yardstick.")
_DATASET = flags.DEFINE_string("dataset", "bibtex", "--peer: the dataset.")
_MEMBERS = flags.DEFINE_integer(
    "members", 1, "> 1: an ensemble of this many seeds (summed head scores, "
    "as xmc_accuracy's best_ensemble).")

_BLEND = flags.DEFINE_bool(
    "blend", False, "Score the --members ensemble blended with kNN label votes "
    "over xmc_accuracy.KNN_GRID; logs the grid and the best setting (by "
    "validation P@1 + P@5), which xmc_accuracy.KNN_BLEND then holds.")

_BLEND_GRID = flags.DEFINE_string(
    "blend_grid", None, "--blend: a JSON object with lists 'k', 'power', "
    "'weight' replacing xmc_accuracy.KNN_GRID (e.g. to look past its edge).")

_CONFIG = flags.DEFINE_string(
    "config", None, "Config module to start from, optionally with its "
    "argument: configs/citeulike_t.py:head=mhc.")
_SET = flags.DEFINE_multi_string(
    "set", [], "KEY=VALUE override (VALUE a python literal), repeatable.")
_VALIDATION = flags.DEFINE_float("validation_fraction", 0.2,
                                 "Tail of train held out for scoring.")
_NOTE = flags.DEFINE_string("note", "", "Free text stored with the trial.")
_MARKDOWN = flags.DEFINE_bool("markdown", False,
                              "Only print the trial log as a markdown table.")
_LOG = flags.DEFINE_string(
    "log", str(pathlib.Path(__file__).parent / "results" / "xmc_tuning.json"),
    "Trial log (JSON list), appended to.")


def parse_override(text: str) -> tuple[str, object]:
  """``'encoder.hidden=(512,)'`` -> ``('encoder.hidden', (512,))``."""
  if "=" not in text:
    raise ValueError(f"--set={text!r} is not KEY=VALUE")
  key, value = text.split("=", 1)
  try:
    return key.strip(), ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key.strip(), value  # a bare string such as adamw


def metric_keys(trials: list[dict]) -> tuple[str, ...]:
  """The columns: P@1/3/5, or HR@10 / NDCG@10 for next-item trials."""
  if any("HR@10" in t for t in trials):
    return ("HR@10", "NDCG@10")
  return ("P@1", "P@3", "P@5")


def markdown(trials: list[dict]) -> str:
  keys = metric_keys(trials)
  rows = ["| dataset | config | overrides | " + " | ".join(
      f"val {k}" for k in keys) + " | train s |",
          "|---|---|---|" + "---|" * len(keys) + "---|"]
  for t in trials:
    sets = ", ".join(f"{k}={v}" for k, v in t["overrides"].items()
                     if k != "eval_every") or "-"
    if "blend" in t:
      b, plain = t["blend"], t["ensemble_without_knn"]
      sets += (f"; + kNN k={b['k']}, sim^{b['power']}, w={b['weight']} (best "
               f"of {len(t['grid'])}; without kNN {100 * plain['P@1']:.1f} / "
               f"{100 * plain['P@5']:.1f})")
    pct = ((lambda v: "-" if v is None else f"{v:.4f}") if "HR@10" in keys
           else (lambda v: "-" if v is None else f"{100 * v:.1f}"))
    secs = "-" if t["train_seconds"] is None else f"{t['train_seconds']:.0f}"
    rows.append(f"| {t['dataset']} | {t['config']} | {sets} | " + " | ".join(
        pct(t.get(k)) for k in keys) + f" | {secs} |")
  return "\n".join(rows)


def append(log: pathlib.Path, trial: dict) -> None:
  """Appends to the log as it is now (other trials may have been added)."""
  trials = json.loads(log.read_text()) if log.exists() else []
  log.parent.mkdir(parents=True, exist_ok=True)
  log.write_text(json.dumps(trials + [trial], indent=1))
  print(markdown([trial]))


def eval_curve(metrics_jsonl: pathlib.Path) -> list[list[float]]:
  """``[step, P@1, P@5]`` (next-item data: ``[step, HR@10, NDCG@10]``)."""
  rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines()]
  keys = (("eval/HR@10", "eval/NDCG@10") if any("eval/HR@10" in r for r in rows)
          else ("eval/P@1", "eval/P@5"))
  return [[r["step"]] + [round(r[k], 4) for k in keys]
          for r in rows if keys[0] in r]


def peer_trial() -> dict:
  from mhe_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  train = formats.read_xc(xmc_accuracy.data_root() / _DATASET.value /
                          "train.txt")
  fit, held_out = datasets._split_validation(  # pylint: disable=protected-access
      train, _VALIDATION.value)
  row = xmc_accuracy.run_peer(_PEER.value, _DATASET.value, fit, held_out)
  return {"dataset": _DATASET.value, "config": _PEER.value, "overrides": {},
          "validation_fraction": _VALIDATION.value, "note": "peer yardstick",
          **{k: row[k] for k in ("P@1", "P@3", "P@5", "train_seconds")},
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds")}


def main(argv):
  del argv
  out = pathlib.Path(_LOG.value)
  trials = json.loads(out.read_text()) if out.exists() else []
  if _MARKDOWN.value:
    print(markdown(trials))
    return
  if _PEER.value:
    append(out, peer_trial())
    return
  from mhe_jax import train  # pylint: disable=g-import-not-at-top
  overrides = dict(parse_override(s) for s in _SET.value)
  path, _, arg = _CONFIG.value.partition(":")  # configs/x.py:head=mhc
  config = config_lib.override(
      xmc_accuracy.load_config(pathlib.Path(path), arg or None), overrides,
      where=f"--set of {_CONFIG.value}")
  config.data.validation_fraction = _VALIDATION.value
  config.checkpoint_every = 0
  curve = []
  blend = {}
  if _BLEND.value or _MEMBERS.value > 1:
    run = xmc_accuracy.ensemble(config, range(_MEMBERS.value))
    results = {**run.members[0], **run.metrics, "train_seconds": run.seconds}
    if _BLEND.value:  # the trial's P@k are then the best blend's
      settings = None
      if _BLEND_GRID.value:
        settings = json.loads(_BLEND_GRID.value)
        if sorted(settings) != ["k", "power", "weight"]:
          raise ValueError(f"--blend_grid needs exactly the keys k, power, "
                           f"weight; got {sorted(settings)}")
        overrides["blend_grid"] = settings
      grid = xmc_accuracy.blend_grid(run, settings)
      best = xmc_accuracy.best_of_grid(grid)
      results.update(best)
      blend = {"blend": {k: best[k] for k in ("k", "power", "weight")},
               "ensemble_without_knn": {k: run.metrics[k]
                                        for k in ("P@1", "P@3", "P@5")},
               "grid": grid}
      print(f"blend: best of {len(grid)} settings by P@1 + P@5: {best}; "
            f"without kNN {blend['ensemble_without_knn']}")
    overrides["ensemble_members"] = _MEMBERS.value
  else:
    with tempfile.TemporaryDirectory() as workdir:
      results = train.train_and_evaluate(config, workdir)
      curve = eval_curve(pathlib.Path(workdir) / "metrics.jsonl")
  assert results["eval_split"] == "validation", results["eval_split"]
  trial = {
      "dataset": results["dataset"],
      "config": pathlib.Path(path).stem + (f":{arg}" if arg else ""),
      "overrides": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in overrides.items()},
      "validation_fraction": _VALIDATION.value,
      "note": _NOTE.value,
      **{k: results[k] for k in ("P@1", "P@3", "P@5", "HR@1", "HR@5",
                                 "HR@10", "NDCG@5", "NDCG@10",
                                 "sampled/HR@10", "sampled/NDCG@10")
         if k in results},
      "train_seconds": results["train_seconds"],
      "num_params": results["num_params"],
      # With --set=eval_every=N: [step, P@1, P@5] on the validation rows
      # ([step, HR@10, NDCG@10] for next-item data).
      "curve": curve,
      **blend,
      "machine": f"{platform.node()} {platform.machine()}",
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  append(out, trial)


if __name__ == "__main__":
  app.run(main)
