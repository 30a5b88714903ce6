"""Faults: a trainer SIGKILLed mid-save, flipped checkpoint bytes, non-finite
losses, a failed prediction, data paths that do not exist.

References: the parameters of an uninterrupted run of the same config (bit
for bit), a step-by-step run that leaves out the poisoned batch, the files a
failed prediction must leave alone, exact exit codes and messages. The
killed trainers are subprocesses (tests/kill_during_save.py); everything
else runs in-process.
"""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT
import mhe_jax
from mhe_jax import checkpointing
from mhe_jax import config_lib
from mhe_jax import streaming
from mhe_jax import train
from mhe_jax.data import datasets
from mhe_jax.data import pipeline
import kill_during_save
import tiny_config

STEPS, EVERY = 10, 5
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def tiny(**overrides):
  # Constant learning rate: a resumed run follows the same trajectory.
  return tiny_config.make(STEPS, EVERY, **{"optimizer.schedule": "constant",
                                           **overrides})


def params_at(workdir, step):
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute())


def _flat(tree):
  """Leaf path ("0/head/kernel/value") -> array, for a State or a dict."""
  tree = checkpointing._to_savable(tree)  # pylint: disable=protected-access
  return {checkpointing._path_name(path): np.array(leaf)  # pylint: disable=protected-access
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same(a, b):
  """Bit for bit: the same leaf paths, shapes, dtypes and values."""
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _kill_cmd(workdir, point):
  cmd = [sys.executable, str(REPO_ROOT / "tests" / "kill_during_save.py"),
         "--config=" + str(REPO_ROOT / "tests" / "tiny_config.py"),
         f"--workdir={workdir}", f"--config.num_train_steps={STEPS}",
         f"--config.checkpoint_every={EVERY}",
         "--config.optimizer.schedule=constant"]
  return cmd, {"MHE_KILL_AT": point, "MHE_KILL_STEP": str(STEPS)}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, request):
  """point -> (workdir, return code, stderr) of a trainer SIGKILLed while
  saving its last checkpoint, at each point of kill_during_save.POINTS.

  The children share a compilation cache: the first fills it, the rest start
  together.
  """
  root = tmp_path_factory.mktemp("killed")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  def start(point):
    cmd, extra = _kill_cmd(root / point, point)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env={**env, **extra},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)

  first, *rest = kill_during_save.POINTS
  procs = {first: start(first)}
  request.getfixturevalue("straight")  # built meanwhile
  procs[first].wait(timeout=300)
  procs.update({p: start(p) for p in rest})
  out = {}
  for point, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    out[point] = (root / point, proc.returncode, err)
  return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run (checkpoints 5 and 10): the reference."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(tiny(), workdir)
  return workdir


# --------------------------------------------------- SIGKILL during a save
@pytest.mark.parametrize("point", kill_during_save.POINTS)
def test_sigkill_during_a_save_then_resume_is_exact(
    point, killed, straight, caplog):
  workdir, returncode, stderr = killed[point]
  assert returncode == -9, stderr[-3000:]
  assert (workdir / "killed_at").read_text() == point
  ckpt = workdir / "checkpoints"
  tmp = ckpt / f"{STEPS}{TMP_SUFFIX}"
  # What each point leaves on disk (checkpoint 5 is complete in every case).
  assert (ckpt / "5" / "commit_success.txt").is_file()
  committed = point == "after_rename"
  assert (ckpt / str(STEPS)).is_dir() == committed
  assert tmp.is_dir() == (point in ("mid_write", "before_rename"))
  if point == "mid_write":
    assert not (tmp / "data").exists() and not (tmp / "commit_success.txt"
                                                ).exists()
  if point == "before_rename":
    assert (tmp / "commit_success.txt").is_file()

  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny(), workdir)
  assert results["steps"] == STEPS
  resumed_from = STEPS if committed else 5
  assert f"resumed from checkpoint {resumed_from} in" in caplog.text
  assert not list(ckpt.glob(f"*{TMP_SUFFIX}*"))  # the unfinished save removed
  assert sorted(p.name for p in ckpt.iterdir()) == ["10", "5"]
  assert_same(params_at(workdir, STEPS), params_at(straight, STEPS))


# ---------------------------------------------------- flipped checkpoint bytes
def _flip(path, offset):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


def _btree_node_file(step_dir):
  (node,) = (step_dir / "state" / "d").iterdir()  # OCDBT b-tree nodes, CRC-32C
  return node


def _largest_array_file(step_dir):
  files = (step_dir / "state" / "ocdbt.process_0" / "d").iterdir()
  return max(files, key=lambda p: p.stat().st_size)  # zstd-compressed chunks


# A tensorstore read that fails inside orbax's restore leaves callbacks that
# fire on its closed asyncio loop ("Event loop is closed"), reported as
# unraisable exceptions; the restore itself raised and was handled.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage,match", [
    # Orbax and tensorstore: every byte of the OCDBT b-tree node file is
    # under its CRC-32C; the manifest too; the zstd frame magic of an array
    # chunk; JSON that no longer parses.
    ("btree_node_middle", "CRC-32C checksum verification failed"),
    ("manifest", "manifest.ocdbt"),
    ("array_chunk_header", "Encountered error while reading array"),
    ("metadata_json", "JSONDecodeError"),
    # The checkpoint's own checksums: a flip inside a compressed array chunk
    # (no checksum there: it decompresses to different values) and a digit
    # of the data iterator's JSON state.
    ("array_chunk_payload",
     "1 array(s) do not match the checksums saved with them ("),
    ("data_state_digit", "the data iterator state does not match its saved "
     "SHA-256"),
])
def test_flipped_byte_falls_back_to_the_previous_checkpoint(
    damage, match, straight, tmp_path, caplog):
  workdir = tmp_path / "w"
  shutil.copytree(straight / "checkpoints", workdir / "checkpoints")
  step_dir = workdir / "checkpoints" / str(STEPS)
  if damage == "btree_node_middle":
    node = _btree_node_file(step_dir)
    _flip(node, node.stat().st_size // 2)
  elif damage == "manifest":
    _flip(step_dir / "state" / "manifest.ocdbt", 50)
  elif damage == "array_chunk_header":
    _flip(_largest_array_file(step_dir), 0)
  elif damage == "array_chunk_payload":
    chunk = _largest_array_file(step_dir)
    _flip(chunk, chunk.stat().st_size // 2)
  elif damage == "data_state_digit":
    meta = step_dir / "data" / "metadata"
    _flip(meta, meta.read_bytes().index(b'"step": 10') + len('"step": 1'))
  else:
    text = (step_dir / "state" / "_METADATA").read_bytes()
    _flip(step_dir / "state" / "_METADATA", text.index(b'"tree_metadata"') - 1)
  trainer = train.Trainer(tiny(), workdir)
  with caplog.at_level(logging.WARNING):
    step, state, data_state = trainer.checkpointer.restore_latest(
        trainer.abstract_state)
  trainer.checkpointer.close()
  assert f"checkpoint {STEPS} in" in caplog.text
  assert "is damaged, skipping it" in caplog.text and match in caplog.text
  assert step == 5 and (workdir / "checkpoints" / f"{STEPS}.unreadable").is_dir()
  _, want_state, want_data = _restore(straight, 5, trainer)
  assert_same(state, want_state)
  assert data_state == want_data


def test_a_checkpoint_without_checksums_restores_unchecked(
    straight, tmp_path):
  """Checkpoints written before the checksums item existed still resume."""
  workdir = tmp_path / "w"
  shutil.copytree(straight / "checkpoints", workdir / "checkpoints")
  step_dir = workdir / "checkpoints" / str(STEPS)
  saved = json.loads((step_dir / "checksums" / "metadata").read_text())
  assert sorted(saved) == ["arrays", "data"] and len(saved["arrays"]) == len(
      _flat(params_at(straight, STEPS)))
  shutil.rmtree(step_dir / "checksums")
  trainer = train.Trainer(tiny(), workdir)
  step, state, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
  trainer.checkpointer.close()
  assert step == STEPS
  assert_same(state, params_at(straight, STEPS))


# ------------------------------------------------------------ non-finite loss
NAN_AT = 7  # 1-based step whose batch holds a NaN feature value


class _NaNBatches:
  """A train iterator whose ``at``-th batch (0-based) holds NaN features."""

  def __init__(self, it, at):
    self.it, self.at, self.n = it, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    if self.n == self.at:
      batch = dict(batch, feature_values=np.full_like(
          batch["feature_values"], np.nan))
    self.n += 1
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


@pytest.fixture
def nan_batch(monkeypatch):
  """The trainer's batches get NaN features at step NAN_AT; returns the
  unpatched pipeline.train_loader."""
  loader = pipeline.train_loader

  class Loader:
    def __init__(self, *args, **kwargs):
      self.loader = loader(*args, **kwargs)

    def __iter__(self):
      return _NaNBatches(iter(self.loader), NAN_AT - 1)

  monkeypatch.setattr(train.pipeline, "train_loader", Loader)
  return loader


@pytest.fixture(scope="module")
def stepper(tmp_path_factory):
  """A Trainer of tiny() driven step by step (its step compiled once)."""
  return train.Trainer(tiny(), tmp_path_factory.mktemp("stepper"))


def test_a_non_finite_step_returns_its_input_state(stepper):
  trainer = stepper
  state = trainer.init_state()
  before = _flat(state)
  batch = next(iter(pipeline.train_loader(trainer.data.train, 64, seed=0)))
  batch["feature_values"][0, 0] = np.inf
  state, metrics = trainer.train_step(state, batch, 0)
  assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
  assert_same(state, before)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(
    nan_batch, straight, tmp_path):
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(tiny(), tmp_path)
  assert str(e.value) == (
      f"training stopped at step {NAN_AT} of {STEPS}: the loss or gradient "
      "norm is non-finite (loss=nan, grad_norm=nan). That update was not "
      "applied and no later state was saved; the newest checkpoint on disk "
      f"is still step 5 in {tmp_path / 'checkpoints'}. Lower the learning "
      "rate or clip gradients (config.optimizer.grad_clip), or set "
      "config.nonfinite='skip' to skip such batches.")
  ckpt = tmp_path / "checkpoints"
  assert sorted(p.name for p in ckpt.iterdir()) == ["5"]
  assert_same(params_at(tmp_path, 5), params_at(straight, 5))
  assert not (tmp_path / "results.json").exists()


def test_non_finite_loss_skip_leaves_out_that_batch(
    nan_batch, straight, stepper, tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(tiny(nonfinite="skip", log_every=5),
                                       tmp_path)
  assert results["steps"] == STEPS
  assert (f"training step {NAN_AT} of {STEPS} is non-finite (loss=nan, "
          "grad_norm=nan): skipped its batch" in caplog.text)
  metrics = [json.loads(l)
             for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  skipped = {m["step"]: m["train/skipped_steps"] for m in metrics
             if "train/skipped_steps" in m}
  assert skipped == {5: 0, 10: 1}

  # Reference: the straight run's checkpoint 5, then steps 6..10 through the
  # same step function with the poisoned batch drawn but never applied.
  trainer = stepper
  _, state, data_state = _restore(straight, 5, trainer)
  it = iter(nan_batch(trainer.data.train, 64, seed=0))
  it.set_state(data_state)
  for step in range(5, STEPS):
    batch = next(it)
    if step + 1 != NAN_AT:
      state, m = trainer.train_step(state, batch, step)
      assert bool(m["finite"])
  assert_same(params_at(tmp_path, STEPS), state)


def _restore(workdir, step, trainer):
  """(step, state, data state) of checkpoint ``step`` of ``workdir``."""
  manager = checkpointing.Checkpointer(workdir / "checkpoints")
  target = checkpointing._abstract_savable(trainer.abstract_state)  # pylint: disable=protected-access
  restored = manager.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  manager.close()
  state = checkpointing._from_savable(restored["state"], trainer.abstract_state)  # pylint: disable=protected-access
  return step, state, dict(restored["data"])


def test_nonfinite_must_be_stop_or_skip(tmp_path):
  with pytest.raises(ValueError, match=r"config.nonfinite must be one of "
                     r"\['stop', 'skip'\], got 'ignore'"):
    train.Trainer(tiny(nonfinite="ignore"), tmp_path)


# ------------------------------------------------------- atomic predictions
def _xc_input(path, rows, num_features=2_000):
  rng = np.random.default_rng(0)
  lines = [f"{rows} {num_features} 500"]
  for _ in range(rows):
    ids = sorted(rng.choice(num_features, 5, replace=False))
    lines.append("0 " + " ".join(f"{i}:1" for i in ids))
  path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("previous", [None, "an earlier complete file\n"])
def test_a_failed_prediction_leaves_no_partial_output(
    previous, straight, tmp_path, monkeypatch):
  predictor = mhe_jax.load(straight, batch_sizes=(8,))
  source, output = tmp_path / "in.txt", tmp_path / "out.txt"
  _xc_input(source, 40)
  if previous is not None:
    output.write_text(previous)
  format_lines = streaming._format_lines  # pylint: disable=protected-access
  calls = []

  def failing(pred, write_names):
    calls.append(1)
    if len(calls) == 3:
      # Two batches written: a SIGKILL now leaves exactly this on disk.
      (tmp,) = tmp_path.glob("out.txt.tmp-*")
      assert tmp.name == f"out.txt.tmp-{os.getpid()}"
      assert (output.read_text() if output.exists() else None) == previous
      raise KeyboardInterrupt("stopped mid-stream")
    return format_lines(pred, write_names)

  monkeypatch.setattr(streaming, "_format_lines", failing)
  with pytest.raises(KeyboardInterrupt, match="stopped mid-stream"):
    streaming.predict_file(predictor, source, output, k=3, batch_size=8)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["in.txt"] + (["out.txt"] if previous else []))
  assert (output.read_text() if output.exists() else None) == previous

  monkeypatch.setattr(streaming, "_format_lines", format_lines)
  assert streaming.predict_file(predictor, source, output, k=3,
                                batch_size=8) == 40
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
  lines = output.read_text().splitlines()
  assert len(lines) == 40 and all(len(l.split()) == 3 for l in lines)


# ----------------------------------------------------------- data paths
@pytest.mark.parametrize("key,kind", [
    ("data.train", "file"), ("data.test", "file"), ("data.labels_xml", "file"),
    ("data.data_dir", "directory"), ("data.tfds_data_dir", "directory")])
def test_a_missing_data_path_fails_before_any_work(key, kind, tmp_path,
                                                   monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data was read")
  monkeypatch.setattr(datasets, "load_dataset", no_data)
  missing = tmp_path / "nope" / "x.txt"
  workdir = tmp_path / "work"
  for path, what in [(missing, "does not exist"),
                     (tmp_path, "is a directory, not a file") if kind == "file"
                     else (REPO_ROOT / "README.md",
                           "is a file, not a directory")]:
    with pytest.raises(config_lib.ConfigPathError) as e:
      train.train_and_evaluate(tiny(**{key: str(path)}), workdir)
    assert str(e.value) == (f"config.{key}={str(path)!r}: {path} {what}; "
                            f"expected a {kind}")
    assert not workdir.exists()  # not even locked


def test_a_missing_data_path_exits_with_the_message(tmp_path):
  missing = tmp_path / "train.txt"
  proc = subprocess.run(
      [sys.executable, "-m", "mhe_jax.main",
       "--config=" + str(REPO_ROOT / "tests" / "tiny_config.py"),
       f"--workdir={tmp_path / 'work'}", "--config.data.name=xc_files",
       f"--config.data.train={missing}", f"--config.data.test={missing}"],
      cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: config.data.train={str(missing)!r}: {missing} does not exist; "
      "expected a file")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "work").exists()
