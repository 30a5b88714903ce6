"""The trainer end to end: results, config errors, sharding, exact resume."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT
from mhe_jax import train
import tiny_config as tiny_config_lib


def tiny_config(**overrides):
  return tiny_config_lib.make(20, 10, **overrides)


def test_train_and_evaluate_writes_results(tmp_path):
  config = tiny_config(num_train_steps=60, **{"optimizer.learning_rate": 5e-3})
  results = train.train_and_evaluate(config, tmp_path)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == pytest.approx(results)
  for key in ("config", "dataset", "head", "num_classes", "P@1", "P@3", "P@5",
              "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5",
              "train_seconds", "train_examples_per_second", "num_params",
              "num_devices"):
    assert key in results, key
  assert results["num_devices"] == 8 and results["steps"] == 60
  # Far above chance (5 labels of 500 per example: P@1 of a random guess ~1%).
  assert results["P@1"] > 0.2, results
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert any("train/loss" in json.loads(l) for l in lines)
  assert list(tmp_path.glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == [40, 50, 60]  # keep 3


def test_single_label_results(tmp_path):
  config = tiny_config(**{"data.multilabel": False, "head.type": "mhs",
                          "head.num_sampled_groups": 8})
  results = train.train_and_evaluate(config, tmp_path)
  assert {"acc@1", "acc@5"} <= set(results) and "PSP@1" not in results


@pytest.mark.parametrize("overrides,match", [
    ({"head.type": "nope"}, r"unknown head 'nope'; known: \['lightdxml', "
     r"'mhc', 'mhp', 'mhs', 'unidec', 'vanilla'\]$"),
    ({"encoder.type": "cnn"}, r"unknown encoder 'cnn'"),
    ({"data.name": "imagenet"}, r"unknown dataset 'imagenet'"),
    ({"head.radices": (10, 10)}, r"head.radices=\(10, 10\).*below num_classes=500"),
    ({"mesh.shape": (3, -1)}, r"does not divide the 8 devices"),
    ({"batch_size": 60}, r"batch_size=60 is not divisible by the 8 devices"),
    ({"optimizer.name": "lamb"}, r"unknown optimizer 'lamb'"),
    ({"mesh.axes": ("data", "model")}, r"must contain 'classes'"),
    ({"eval.ks": (0, 5)}, r"config.eval.ks must be positive"),
])
def test_invalid_configs_fail_early(tmp_path, overrides, match):
  config = tiny_config()
  with pytest.raises(ValueError, match=match):
    for key, value in overrides.items():
      node = config
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value
    train.Trainer(config, tmp_path)


def test_unknown_config_key(tmp_path):
  config = tiny_config()
  config.head.beam_width = 3
  with pytest.raises(ValueError, match=r"unknown config key 'head.beam_width'; "
                     r"known keys under 'head': \['beam', 'bias_init', 'child_embedding', "
                     r"'chunk_size'"):
    train.Trainer(config, tmp_path)


def _params(state):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.filter_state(state[0], nnx.Param)))


@pytest.mark.parametrize("head", ["vanilla", "mhp"])
def test_sharded_equals_unsharded(tmp_path, head):
  """Same loss and parameters on a (8, 1), (2, 4) and (1, 8) mesh.

  SGD, not adam: adam's update is invariant to the gradient's scale, so it
  would hide a gradient wrongly summed (or averaged) over devices.
  """
  results = []
  for shape in ((8, 1), (2, 4), (1, 8)):
    config = tiny_config(**{"head.type": head, "mesh.shape": shape,
                            "head.chunk_size": 128, "optimizer.name": "sgd",
                            "data.num_classes": 500,  # pads to 504 on 8
                            "optimizer.learning_rate": 0.5})
    trainer = train.Trainer(config, tmp_path / str(shape))
    state = trainer.init_state()
    it = iter(train.pipeline.train_loader(trainer.data.train, 64, seed=0))
    losses = []
    for step in range(3):
      state, m = trainer.train_step(state, next(it), step)
      losses.append(float(m["loss"]))
    results.append((losses, _params(state)))
  def same(a, b):
    # A class-sharded vanilla classifier pads C=500 to 504 columns on 8
    # devices; the padding must stay inert (zero) and the rest must agree.
    if a.shape != b.shape:
      np.testing.assert_array_equal(a[..., b.shape[-1]:], 0)
      a = a[..., :b.shape[-1]]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  for losses, params in results[1:]:
    np.testing.assert_allclose(losses, results[0][0], rtol=2e-5)
    jax.tree.map(same, params, results[0][1])


def _run_main(workdir, *flags, wait=True):
  cmd = [sys.executable, "-m", "mhe_jax.main",
         "--config=" + str(REPO_ROOT / "tests" / "tiny_config.py"),
         f"--workdir={workdir}", *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if wait:
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _final_params(workdir, step):
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())


def test_resume_after_sigkill_is_exact(tmp_path):
  straight = _run_main(tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]
  proc = _run_main(tmp_path / "killed", wait=False)
  marker = tmp_path / "killed" / "checkpoints" / "20"
  deadline = time.time() + 240
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = _run_main(tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint" in resumed.stderr
  a = _final_params(tmp_path / "straight", 40)
  b = _final_params(tmp_path / "killed", 40)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_damaged_latest_checkpoint_is_skipped(tmp_path, caplog):
  config = tiny_config()
  train.train_and_evaluate(config, tmp_path)  # checkpoints 10 and 20
  for f in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  config = tiny_config(num_train_steps=30)
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, tmp_path)
  assert "checkpoint 20" in caplog.text and "unreadable" in caplog.text
  assert results["steps"] == 30
  # It resumed from step 10, so it trained 20 steps in this run.
  assert "resumed from checkpoint 10" in caplog.text
  assert (tmp_path / "checkpoints" / "20.unreadable").is_dir()  # kept aside


def test_trains_from_a_prepared_tfds_dataset(tmp_path, shared_data):
  from mhe_jax.data import tfds as tfds_lib
  tfds_lib.prepare_xmc(
      "bibtex_small", {"train": shared_data / "bibtex" / "train.txt",
                       "test": shared_data / "bibtex" / "test.txt"},
      data_dir=tmp_path / "tfds")
  config = tiny_config(**{"data.name": "tfds",
                          "data.tfds_name": "mhe_xmc/bibtex_small",
                          "data.tfds_data_dir": str(tmp_path / "tfds"),
                          "num_train_steps": 5})
  trainer = train.Trainer(config, tmp_path / "work")
  assert trainer.data.num_classes == 159 and trainer.data.num_train == 4880
