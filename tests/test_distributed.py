"""Two processes x 4 CPU devices train exactly like one process x 8 devices.

Launches ``python -m mhe_jax.main`` twice with the explicit environment
contract of :mod:`mhe_jax.distributed` (``MHE_JAX_DISTRIBUTED=1``,
``MHE_COORDINATOR_ADDRESS``, ``MHE_NUM_PROCESSES``, ``MHE_PROCESS_ID``);
cross-process CPU collectives go through gloo, jax 0.10's default
``jax_cpu_collectives_implementation``. Both processes share one workdir, as
on a shared filesystem. The reference is the same config trained in this
(single) process on the 8 fake devices of conftest.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT
from mhe_jax import train
import tiny_config as tiny_config_lib

STEPS = 20
TIMEOUT_S = 150  # Per multi-process run; the run itself takes ~25 s here.

# Keys of results.json that describe the run, not what it learned.
_RUN_KEYS = {"train_seconds", "compile_seconds", "train_examples_per_second",
             "num_processes"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: pathlib.Path, num_processes: int, devices_per_process: int,
            log_dir: pathlib.Path) -> list[str]:
  """Runs main.py in ``num_processes`` processes; returns their logs."""
  port = _free_port()
  cmd = [sys.executable, "-m", "mhe_jax.main",
         "--config=" + str(REPO_ROOT / "tests" / "tiny_config.py"),
         f"--workdir={workdir}", f"--config.num_train_steps={STEPS}",
         "--config.checkpoint_every=10"]
  procs, logs = [], []
  try:
    for i in range(num_processes):
      env = dict(
          os.environ, JAX_PLATFORMS="cpu",
          XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
          MHE_JAX_DISTRIBUTED="1",
          MHE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
          MHE_NUM_PROCESSES=str(num_processes), MHE_PROCESS_ID=str(i))
      log = open(log_dir / f"process{i}.log", "w+", encoding="utf-8")
      logs.append(log)
      procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while (any(p.poll() is None for p in procs)
           and time.monotonic() < deadline
           and all(p.poll() in (None, 0) for p in procs)):
      time.sleep(0.1)
  finally:
    # A failed or hung process would leave its peers waiting in a collective:
    # kill whatever is still running, then reap everything.
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait(timeout=30)
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
  for i, (p, text) in enumerate(zip(procs, texts)):
    assert p.returncode == 0, (
        f"process {i} exited with {p.returncode}:\n{text[-4000:]}")
  return texts


def _state(workdir: pathlib.Path, target=None):
  path = workdir / "checkpoints" / str(STEPS) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute(), target)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  multi = tmp_path_factory.mktemp("two_processes")
  logs = _launch(multi / "workdir", 2, 4, multi)
  single = tmp_path_factory.mktemp("one_process") / "workdir"
  config = tiny_config_lib.get_config()
  config.num_train_steps = STEPS
  config.checkpoint_every = 10
  reference = train.train_and_evaluate(config, single)
  return multi / "workdir", logs, single, reference


def test_two_processes_initialise_and_share_the_devices(runs):
  _, logs, _, _ = runs
  for i, log in enumerate(logs):
    assert f"jax.distributed initialised: process {i} of 2, 8 devices" in log


def test_results_equal_single_process(runs):
  multi, _, _, reference = runs
  got = json.loads((multi / "results.json").read_text())
  assert got["num_processes"] == 2 and reference["num_processes"] == 1
  assert got["num_devices"] == reference["num_devices"] == 8
  assert got["steps"] == STEPS
  assert set(got) == set(reference)
  for key, want in reference.items():
    if key in _RUN_KEYS:
      continue
    if isinstance(want, float):
      assert got[key] == pytest.approx(want, rel=1e-5, abs=1e-6), key
    else:
      assert got[key] == want, key


def test_metrics_written_once(runs):
  """Only process 0 writes metrics: no step's train metrics appear twice."""
  multi, _, _, _ = runs
  lines = [json.loads(l) for l in
           (multi / "metrics.jsonl").read_text().splitlines()]
  train_steps = [l["step"] for l in lines if "train/loss" in l]
  assert train_steps == [10, 20]
  assert len(list(multi.glob("events.out.tfevents.*"))) == 1


def test_final_parameters_equal_single_process(runs):
  multi, _, single, _ = runs
  steps = sorted(int(p.name) for p in (multi / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [10, STEPS]
  want = _state(single)
  # Saved by processes with 4 devices each: restore onto this process's 8.
  got = _state(multi, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      want))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               got, want)
