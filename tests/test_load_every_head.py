"""Every head.type the trainer accepts loads, predicts and exports.

Each type trains a few steps on a tiny synthetic task; the references are the
trainer's own evaluation of that run: the top-k labels its final evaluation
scored (recorded as they reach the metric accumulator) and ``results.json``
for P@k / nDCG@k / PSP@k. The workdir is all the loader gets: the training
data is rebuilt only for the references.
"""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT
import mhe_jax
from mhe_jax import config_lib
from mhe_jax import export
from mhe_jax import metrics as metrics_lib
from mhe_jax import model_info
from mhe_jax import registry
from mhe_jax import streaming
from mhe_jax import train
from mhe_jax.data import datasets
from mhe_jax.data import formats
from mhe_jax.data import pipeline

HEAD_TYPES = ("vanilla", "mhp", "mhc", "mhs", "unidec", "lightdxml")
K = 5


def tiny(head_type):
  config = config_lib.base_config()
  config.name = f"tiny_{head_type}"
  config.data.num_classes = 60
  config.data.num_features = 400
  config.data.num_train = 256
  config.data.num_test = 100  # not a multiple of the eval batch: padded rows
  config.encoder.embed_dim = 16
  config.encoder.hidden = (16,)
  config.head.type = head_type
  config.head.num_sampled_groups = 4   # mhs: of the 8 groups
  config.head.beam = 4                 # mhc
  config.head.num_hard_negatives = 4   # unidec / lightdxml
  config.head.shortlist_size = 10
  config.head.refresh_every = 2
  config.head.proxy_steps = 2          # lightdxml: one full cycle
  config.head.classifier_steps = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 4
  config.log_every = 4
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 1e-2
  return config


class _Recorder(metrics_lib.XMCMetrics):
  """The trainer's metric accumulator, keeping the labels it is given."""

  seen = []

  def update(self, topk_labels, labels, *args, mask=None, **kwargs):
    keep = slice(None) if mask is None else np.asarray(mask, bool)
    _Recorder.seen.append(np.asarray(topk_labels)[keep])
    return super().update(topk_labels, labels, *args, mask=mask, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """head_type -> (config, workdir, results, eval top-k), trained once."""
  runs = {}

  def get(head_type):
    if head_type not in runs:
      config = tiny(head_type)
      workdir = tmp_path_factory.mktemp(head_type)
      _Recorder.seen = []
      with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.metrics_lib, "XMCMetrics", _Recorder)
        results = train.train_and_evaluate(config, workdir)
      runs[head_type] = (config, workdir, results,
                         np.concatenate(_Recorder.seen))
    return runs[head_type]
  return get


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_load_predict_export_equal_the_trainers_evaluation(head_type, trained,
                                                           tmp_path):
  config, workdir, results, want_labels = trained(head_type)
  predictor = mhe_jax.load(workdir, batch_sizes=(64,))
  data = datasets.load_dataset(config.data, config.seed)
  test = data.eval.data
  assert want_labels.shape[0] == test.num_examples
  scores, labels = predictor.predict(test, k=K)
  np.testing.assert_array_equal(labels, want_labels[:, :K])

  acc = metrics_lib.XMCMetrics(
      ks=tuple(config.eval.ks), num_labels=data.num_classes,
      inv_propensity=metrics_lib.inverse_propensity(
          data.label_counts, data.num_train, A=config.eval.propensity_a,
          B=config.eval.propensity_b))
  acc.update(labels, data.eval.gather(np.arange(test.num_examples))["labels"])
  got = acc.compute()
  on_disk = json.loads((workdir / "results.json").read_text())
  for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
    assert got[key] == pytest.approx(on_disk[key], abs=1e-6), key
    assert on_disk[key] == pytest.approx(results[key], abs=1e-6), key

  run = export.load_exported(
      export.export(predictor, tmp_path / "exported", k=K))
  ids, values = predictor.to_inputs(test, width=predictor.max_features)
  exported_scores, exported_labels = run(ids, values)
  np.testing.assert_array_equal(np.asarray(exported_labels), labels)
  np.testing.assert_allclose(np.asarray(exported_scores), scores, rtol=1e-5,
                             atol=1e-5)


def test_unidec_needs_a_bag_of_words_training_source():
  config = tiny("unidec")
  data = datasets.load_dataset(config.data, config.seed)
  data.train = pipeline.TokenSource(np.arange(20, dtype=np.int32), 4)
  with pytest.raises(ValueError, match=r"training source is a TokenSource, "
                     r"not a SparseSource"):
    registry.unidec_label_features(config, data)
  config.encoder.type = "token_context"
  with pytest.raises(ValueError, match=r"must be encoder.type='sparse_mlp' "
                     r"\(got 'token_context'\)"):
    registry.build_model(config, data, rngs=None)


def test_loading_unidec_without_its_label_features_names_the_file(
    trained, tmp_path):
  _, workdir, _, _ = trained("unidec")
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  (copy / model_info.LABEL_FEATURES_FILE).unlink()
  with pytest.raises(FileNotFoundError, match=str(
      copy.resolve() / model_info.LABEL_FEATURES_FILE)):
    mhe_jax.load(copy)


def test_predict_cli_on_a_unidec_workdir(trained, tmp_path):
  """The predict command line on the UniDEC run equals Predictor.predict."""
  config, workdir, _, _ = trained("unidec")
  test = datasets.load_dataset(config.data, config.seed).eval.data
  xc = tmp_path / "test.txt"
  formats.write_xc(test, xc)
  out = tmp_path / "pred.txt"
  proc = subprocess.run(
      [sys.executable, "-m", "mhe_jax.predict", f"--workdir={workdir}",
       f"--input={xc}", f"--k={K}", f"--output={out}", "--batch_size=64",
       "--progress_every=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  scores, labels = streaming.read_predictions(out)
  want = mhe_jax.load(workdir, batch_sizes=(64,)).predict(test, k=K)
  np.testing.assert_array_equal(labels, want.labels)
  np.testing.assert_allclose(scores, want.scores, rtol=1e-6)


def test_runlocal_bibtex_unidec_loads_and_predicts_its_eval(
    shared_data, tmp_path, monkeypatch):
  """configs/bibtex.py:head=unidec,runlocal trains (fewer steps here), then
  mhe_jax.load(workdir) ranks the test split as the trainer's evaluation."""
  config = config_lib.from_file(
      REPO_ROOT / "configs" / "bibtex.py", "head=unidec,runlocal",
      {"data.data_dir": str(shared_data), "num_train_steps": 4})
  _Recorder.seen = []
  monkeypatch.setattr(train.metrics_lib, "XMCMetrics", _Recorder)
  results = train.train_and_evaluate(config, tmp_path)
  monkeypatch.undo()
  want_labels = np.concatenate(_Recorder.seen)
  test = formats.read_xc(shared_data / "bibtex" / "test.txt")
  _, labels = mhe_jax.load(tmp_path).predict(test, k=K)
  np.testing.assert_array_equal(labels, want_labels[:, :K])
  acc = metrics_lib.XMCMetrics(ks=(1, 3, 5))
  acc.update(labels, test.padded_labels())
  got = acc.compute()
  for key in ("P@1", "P@3", "P@5"):
    assert got[key] == pytest.approx(results[key], abs=1e-6), key
