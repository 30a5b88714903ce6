"""benchmarks/beauty_val_test.py: one checkpoint scored on the validation and
the test targets, as the trainer scores each split."""

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from mhe_jax import train
from mhe_jax.data import interactions
from test_sequences import sequence_config
from test_sequences import write_log

KEYS = tuple(f"{m}@{k}" for m in ("HR", "NDCG") for k in (1, 5, 10))


@pytest.fixture(scope="module")
def vt():
  name = "beauty_val_test_under_test"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "benchmarks" / "beauty_val_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def test_one_checkpoint_on_both_splits(vt, tmp_path):
  # Every user walks the items in steps of +1: the validation target is the
  # validation input's last item + 1, the test target the test input's
  # last item (the validation target) + 1.
  write_log(tmp_path)
  config = sequence_config(tmp_path, "mhc", **{
      "head.label_order": "clustered", "eval.num_negatives": 0})
  results = train.train_and_evaluate(config, tmp_path / "wd")
  out = vt.evaluate_both(config, tmp_path / "wd")
  assert out["step"] == config.num_train_steps
  # The test figures are the trainer's own (test split) evaluation.
  for key in KEYS:
    assert out["test"][key] == pytest.approx(results[key], abs=1e-9), key
  # The validation figures are those of a trainer configured to evaluate on
  # validation, restoring the same checkpoint.
  val_config = config.copy_and_resolve_references()
  val_config.data.validation_fraction = 0.1
  trainer = train.Trainer(val_config, tmp_path / "wd")
  assert trainer.data.eval_split == "validation"
  _, state, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
  trainer.checkpointer.close()
  val = trainer.evaluate(state)
  for key in KEYS:
    assert out["validation"][key] == pytest.approx(val[key], abs=1e-9), key
  # Ranks, per user, against the log itself: the learned rule puts the
  # held-out item first in both splits.
  log = interactions.read_interactions(tmp_path / "amazon_beauty" /
                                       "interactions.txt")
  seqs = log.sequences.to_lists()
  c = log.num_items
  for name, back in (("validation", 2), ("test", 1)):
    ranks = out["ranks"][name]
    assert ranks.shape == (len(seqs),)
    follows = np.array([s[-back] == (s[-back - 1] + 1) % c for s in seqs])
    assert follows.all()
    assert (ranks == 0).mean() > 0.9, name
    assert out[name]["HR@1"] == pytest.approx((ranks == 0).mean())
  # Paired hits and popularity bins add up to each split's HR@10.
  pair = out["paired_hits@10"]
  assert pair["both"] + pair["validation_only"] == pytest.approx(
      out["validation"]["HR@10"])
  assert pair["both"] + pair["test_only"] == pytest.approx(out["test"]["HR@10"])
  for name in ("validation", "test"):
    cells = [c for c in out[name + "/by_target_count"].values() if c["share"]]
    assert sum(c["share"] for c in cells) == pytest.approx(1.0)
    assert sum(c["share"] * c["HR@10"] for c in cells) == pytest.approx(
        out[name]["HR@10"])
  # No target is cold (every item is someone's training target).
  assert out["validation/cold_targets"]["share"] == 0.0
  assert out["test/cold_targets"]["share"] == 0.0


def test_parse_overrides(vt):
  assert vt.parse_overrides(["encoder.dropout=0.2", "encoder.block_layout=pre_ln",
                             "head.radices=(4, 3)"]) == {
                                 "encoder.dropout": 0.2,
                                 "encoder.block_layout": "pre_ln",
                                 "head.radices": (4, 3)}
  with pytest.raises(ValueError, match="'dropout' is not KEY=VALUE"):
    vt.parse_overrides(["dropout"])
