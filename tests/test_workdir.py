"""Resume only what matches, set aside only what is damaged, one trainer.

References: the parameters of an uninterrupted run of the same config, the
bytes of the files a refused or no-op run must leave alone, and the exact
exit code and message of the command line.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT
import mhe_jax
from mhe_jax import checkpointing
from mhe_jax import config_lib
from mhe_jax import train
from mhe_jax import workdir as workdir_lib
import tiny_config


def tiny(steps=20, every=10, **overrides):
  # A constant learning rate, so a run extended by a resume follows the same
  # trajectory as one that was that long from the start.
  return tiny_config.make(steps, every, **{"optimizer.schedule": "constant",
                                           **overrides})


def snapshot(workdir):
  """Relative path -> bytes of every file in the workdir but the lock."""
  workdir = pathlib.Path(workdir)
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != workdir_lib.LOCK_FILE}


def params_at(workdir, step):
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())


def assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def run_cli(workdir, *flags, config=None, timeout=300):
  config = config or str(REPO_ROOT / "tests" / "tiny_config.py")
  return subprocess.run(
      [sys.executable, "-m", "mhe_jax.main", f"--config={config}",
       f"--workdir={workdir}", *flags],
      cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted 20-step run (checkpoints 10 and 20): the reference."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(tiny(), workdir)
  return workdir


# ------------------------------------------------------------ the key table
def test_every_key_is_classified_or_refuses():
  keys = config_lib._flatten(config_lib.base_config())  # pylint: disable=protected-access
  for key in keys:
    assert workdir_lib.changes_state(key) == workdir_lib.KEY_EFFECTS.get(
        key, True), key
  assert workdir_lib.changes_state("head.a_key_added_later")
  for key in ("head.type", "head.radices", "head.label_order", "seed",
              "optimizer.name", "data.name", "encoder.embed_dim"):
    assert workdir_lib.changes_state(key), key
  for key in ("num_train_steps", "log_every", "eval_every", "eval.ks",
              "checkpoint_every", "keep_checkpoints", "eval_batch_size",
              "name"):
    assert not workdir_lib.changes_state(key), key


def test_config_differences_split_by_the_table():
  saved = tiny()
  requested = tiny(**{"head.type": "vanilla", "num_train_steps": 30,
                      "head.radices": (25, 20), "name": "other"})
  refusing, resumable = workdir_lib.config_differences(
      json.loads(saved.to_json_best_effort()), requested)
  assert refusing == [("head.radices", [], [25, 20]),
                      ("head.type", "mhp", "vanilla")]
  assert resumable == [("name", "tiny", "other"),
                       ("num_train_steps", 20, 30)]


def test_an_unclassified_key_refuses(straight, tmp_path, monkeypatch):
  monkeypatch.delitem(workdir_lib.KEY_EFFECTS, "log_every")
  with pytest.raises(workdir_lib.ConfigMismatchError,
                     match=r"log_every  10 -> 5"):
    workdir_lib.check_resume(straight, tiny(log_every=5))
  monkeypatch.undo()
  workdir_lib.check_resume(straight, tiny(log_every=5))  # classified: fine


# ------------------------------------------------------- refuse / start over
def test_changed_head_type_exits_before_training_and_fresh_archives(tmp_path):
  """default.py:runlocal with checkpoints every 5 steps, then head.type
  changed on the same workdir: exit code 1, every file untouched; --fresh
  then archives the old run (still loadable) and trains the new one."""
  workdir = tmp_path / "c1"
  config = config_lib.from_file(REPO_ROOT / "configs" / "default.py",
                                "runlocal", {"checkpoint_every": 5,
                                             "num_train_steps": 10})
  train.train_and_evaluate(config, workdir)
  before = snapshot(workdir)
  assert "checkpoints/10/state/_METADATA" in before

  default_py = str(REPO_ROOT / "configs" / "default.py") + ":runlocal"
  proc = run_cli(workdir, "--config.checkpoint_every=5",
                 "--config.num_train_steps=10", "--config.head.type=vanilla",
                 config=default_py)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  message = proc.stderr[proc.stderr.index("error: "):]
  assert message.startswith(
      f"error: {workdir} holds a run of a different model, optimiser or data "
      "than the requested config, so it cannot resume. Keys that differ "
      f"({workdir / 'config.json'} -> requested):\n"
      '  head.type  "mhp" -> "vanilla"\n'
      "Either train in a new workdir (--workdir=...), or start over in this "
      "one with --fresh")
  assert f"into {workdir / 'archive'}/<time>/ (nothing is deleted)" in message
  assert "no checkpoint" not in proc.stderr and "[1]" not in proc.stderr
  assert snapshot(workdir) == before  # nothing renamed, rewritten or added

  config.head.type = "vanilla"
  config.num_train_steps = 5
  results = train.train_and_evaluate(config, workdir, fresh=True)
  assert results["head"] == "vanilla" and results["steps"] == 5
  (archived,) = (workdir / "archive").iterdir()
  assert snapshot(archived) == before  # moved whole, nothing lost
  assert json.loads((workdir / "results.json").read_text())["head"] == "vanilla"
  assert mhe_jax.load(archived).name == "default (mhp)"
  assert mhe_jax.load(workdir).name == "default (vanilla)"


def test_fresh_on_an_empty_workdir_just_trains(tmp_path):
  results = train.train_and_evaluate(tiny(5, 0), tmp_path, fresh=True)
  assert results["steps"] == 5 and not (tmp_path / "archive").exists()


# ------------------------------------------------------------------ resume
def test_resume_with_changed_bookkeeping_keys_equals_a_straight_run(
    straight, tmp_path):
  train.train_and_evaluate(tiny(10, 10), tmp_path)
  results = train.train_and_evaluate(
      tiny(20, 5, name="renamed", log_every=5, eval_batch_size=64,
           keep_checkpoints=5, **{"eval.ks": (1, 2)}), tmp_path)
  assert results["steps"] == 20 and "P@2" in results
  assert_same_params(params_at(tmp_path, 20), params_at(straight, 20))
  assert json.loads((tmp_path / "config.json").read_text())["name"] == "renamed"


def test_a_run_with_nothing_to_train_keeps_results_and_metrics(
    straight, tmp_path, caplog):
  workdir = tmp_path / "w"
  shutil.copytree(straight, workdir)
  before = snapshot(workdir)
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(tiny(**{"eval.ks": (1, 5)}), workdir)
  assert ("checkpoint 20 in" in caplog.text
          and "nothing was trained; re-evaluated it" in caplog.text)
  assert snapshot(workdir) == before
  on_disk = json.loads((workdir / "results.json").read_text())
  assert results["P@1"] == pytest.approx(on_disk["P@1"], abs=1e-7)
  assert results["steps"] == 20


# ----------------------------------------------------- damage vs mismatch
def _nan_state(workdir, step):
  trainer = train.Trainer(tiny(), workdir)
  _, state, data = trainer.checkpointer.restore_latest(trainer.abstract_state)
  params = nnx.filter_state(state[0], nnx.Param)
  leaf = jax.tree.leaves(params)[0]
  with jax.set_mesh(trainer.mesh):
    leaf_bad = leaf.at[(0,) * leaf.ndim].set(np.nan)
  state = jax.tree.map(lambda x: leaf_bad if x is leaf else x, state)
  trainer.checkpointer.save(step, state, data)
  trainer.checkpointer.close()


def _truncate(workdir, step):
  files = sorted((workdir / "checkpoints" / str(step) / "state").rglob("*"),
                 key=lambda p: p.stat().st_size if p.is_file() else 0)
  big = files[-1]
  big.write_bytes(big.read_bytes()[:big.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated", "non_finite"])
def test_damaged_latest_is_set_aside_and_resume_is_exact(
    damage, straight, tmp_path, caplog):
  if damage == "truncated":
    train.train_and_evaluate(tiny(15, 5), tmp_path)  # checkpoints 5, 10, 15
    _truncate(tmp_path, 15)
    want = "checkpoint 15 in"
  else:
    train.train_and_evaluate(tiny(10, 10), tmp_path)
    _nan_state(tmp_path, 15)                         # checkpoint 15
    want = "holds 1 non-finite value(s)"
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny(), tmp_path)
  assert want in caplog.text and "is damaged, skipping it" in caplog.text
  assert "resumed from checkpoint 10" in caplog.text
  assert (tmp_path / "checkpoints" / "15.unreadable").is_dir()
  assert results["steps"] == 20
  assert_same_params(params_at(tmp_path, 20), params_at(straight, 20))


def test_structure_mismatch_with_a_matching_config_is_an_error(tmp_path):
  """A class-sharded vanilla head pads C=500 to 504 on 8 devices: the same
  model keys, another layout; nothing may be set aside."""
  config = tiny(4, 4, **{"head.type": "vanilla"})
  train.train_and_evaluate(config, tmp_path)
  before = snapshot(tmp_path)
  config.mesh.shape = (1, 8)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"checkpoint 4 in .* holds a state of a different "
                     r"structure .*head/kernel/value: \(32, 500\) float32, "
                     r"expected \(32, 504\) float32.*Nothing was moved"):
    train.train_and_evaluate(config, tmp_path)
  assert snapshot(tmp_path) == before


def test_check_finite_structure_checks_counts_dtypes_shapes_finiteness():
  want = {"a": jax.ShapeDtypeStruct((2,), np.float32),
          "b": jax.ShapeDtypeStruct((), np.int32)}
  good = {"a": np.zeros(2, np.float32), "b": np.int32(3)}
  checkpointing.check_finite_structure(good, want)
  cases = [
      ({"a": np.zeros(2, np.float32)}, checkpointing.CheckpointMismatchError,
       r"\(1 arrays, expected 2\): b: missing"),
      ({**good, "a": np.zeros(3, np.float32)},
       checkpointing.CheckpointMismatchError, r"a: \(3,\) float32, expected "
       r"\(2,\) float32"),
      ({**good, "b": np.float32(3)}, checkpointing.CheckpointMismatchError,
       r"b: \(\) float32, expected \(\) int32"),
      ({**good, "a": np.array([0, np.inf], np.float32)},
       checkpointing.DamagedCheckpointError,
       r"where: a holds 1 non-finite value\(s\) of 2"),
  ]
  for state, error, match in cases:
    with pytest.raises(error, match=match):
      checkpointing.check_finite_structure(state, want, where="where")


# -------------------------------------------------------------------- lock
def test_lock_is_exclusive_and_released(tmp_path):
  with workdir_lib.lock(tmp_path) as path:
    assert path.read_text().split()[0] == str(os.getpid())
    with pytest.raises(workdir_lib.WorkdirLockedError,
                       match=rf"{tmp_path} is in use by another trainer "
                       rf"\(pid {os.getpid()} on "):
      with workdir_lib.lock(tmp_path):
        pass
  with workdir_lib.lock(tmp_path):  # released on exit
    pass


def test_second_trainer_refuses_and_a_killed_holder_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\n"
       "from mhe_jax import workdir\n"
       "with workdir.lock(sys.argv[1]):\n"
       "  print('locked', flush=True)\n"
       "  time.sleep(600)\n", str(tmp_path)],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    proc = run_cli(tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path} is in use by another trainer (pid {holder.pid} "
        f"on ")
    assert not (tmp_path / "checkpoints").exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  with workdir_lib.lock(tmp_path) as path:  # the dead holder's lock is gone
    assert path.read_text().split()[0] == str(os.getpid())
