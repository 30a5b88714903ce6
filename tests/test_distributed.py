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
            log_dir: pathlib.Path, overrides: dict[str, str], *,
            extra_flags: dict[int, list[str]] | None = None,
            pids: list[int] | None = None) -> list[str]:
  """Runs main.py in ``num_processes`` processes; returns their logs.

  Waits at most TIMEOUT_S; when any process fails or time runs out, kills
  the others and raises AssertionError with the return codes and logs.
  ``extra_flags[i]`` are appended to process i's command line; ``pids``
  collects the process ids.
  """
  port = _free_port()
  cmd = [sys.executable, "-m", "mhe_jax.main",
         "--config=" + str(REPO_ROOT / "tests" / "tiny_config.py"),
         f"--workdir={workdir}",
         *(f"--config.{k}={v}" for k, v in overrides.items())]
  # A host's own cluster variables (a CI job under Slurm) must not leak in.
  base_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("SLURM_", "OMPI_", "MHE_", "JAX_COORDINATOR",
                                   "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                   "JAX_LOCAL_DEVICE_IDS"))}
  procs, logs = [], []
  try:
    for i in range(num_processes):
      env = dict(
          base_env, JAX_PLATFORMS="cpu",
          XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
          MHE_JAX_DISTRIBUTED="1",
          MHE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
          MHE_NUM_PROCESSES=str(num_processes), MHE_PROCESS_ID=str(i))
      log = open(log_dir / f"process{i}.log", "w+", encoding="utf-8")
      logs.append(log)
      procs.append(subprocess.Popen(
          cmd + (extra_flags or {}).get(i, []), cwd=REPO_ROOT, env=env,
          stdout=log, stderr=subprocess.STDOUT))
      if pids is not None:
        pids.append(procs[-1].pid)
    deadline = time.monotonic() + TIMEOUT_S
    while (any(p.poll() is None for p in procs)
           and time.monotonic() < deadline
           and all(p.poll() in (None, 0) for p in procs)):
      time.sleep(0.1)
  finally:
    # A failed or hung process would leave its peers waiting in a collective:
    # kill whatever is still running, then reap everything.
    killed = set()
    for i, p in enumerate(procs):
      if p.poll() is None:
        p.kill()
        killed.add(i)
    for p in procs:
      p.wait(timeout=30)
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
  codes = [p.returncode for p in procs]
  if any(codes):
    report = [f"return codes {codes}; killed by the test: {sorted(killed)}"]
    report += [f"--- process {i} (exit {c}):\n{t[-3000:]}"
               for i, (c, t) in enumerate(zip(codes, texts)) if i not in killed]
    raise AssertionError("\n".join(report))
  return texts


def _state(workdir: pathlib.Path, target=None):
  path = workdir / "checkpoints" / str(STEPS) / "state"
  return ocp.StandardCheckpointer().restore(path.absolute(), target)


# Config overrides per case. The vanilla head on a (4, 2) mesh: the data axis
# spans the two processes, the classes axis (class-sharded loss and top-k
# merge) lies within each. The learning rate makes 20 steps learn (P@1 ~0.4,
# chance ~0.01), so misaligned gathered predictions would show in the
# metrics. Adam's update hides a gradient's scale, so the logged gradient
# norms are compared too (a gradient wrongly summed over processes). SGD at a
# rate that learns this fast amplifies the float noise of different
# all-reduce orders to ~1e-3 in 20 steps; adam keeps it at ~1e-6. (The MHP
# head, data parallel over all 8 devices, passes too but would double the
# ~40 s this file takes.)
CASES = {
    "vanilla_classes_sharded": {"head.type": "vanilla", "mesh.shape": (4, 2),
                                "optimizer.learning_rate": 1e-2},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request, tmp_path_factory):
  overrides = {"num_train_steps": STEPS, "checkpoint_every": 10,
               **CASES[request.param]}
  multi = tmp_path_factory.mktemp("two_processes")
  logs = _launch(multi / "workdir", 2, 4, multi, {
      k: ",".join(map(str, v)) if isinstance(v, tuple) else v
      for k, v in overrides.items()})
  single = tmp_path_factory.mktemp("one_process") / "workdir"
  config = tiny_config_lib.get_config()
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
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
  assert got["P@1"] > 0.2, got  # it learned: a misaligned gather would not
  assert set(got) == set(reference)
  for key, want in reference.items():
    if key in _RUN_KEYS:
      continue
    if isinstance(want, float):
      assert got[key] == pytest.approx(want, rel=1e-5, abs=1e-6), key
    else:
      assert got[key] == want, key


def _metric_lines(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_written_once_and_equal_single_process(runs):
  """Only process 0 writes metrics; loss and gradient norm match 1 process."""
  multi, _, single, _ = runs
  got, want = _metric_lines(multi), _metric_lines(single)
  assert [l["step"] for l in got if "train/loss" in l] == [10, 20]
  assert len(list(multi.glob("events.out.tfevents.*"))) == 1
  assert [sorted(l) for l in got] == [sorted(l) for l in want]
  for g, w in zip(got, want):
    for key in g:
      if key != "train/steps_per_sec":
        assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (key, g, w)


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
  # Gloo and in-process all-reduces sum in different orders: ~1e-6 apart
  # after 20 steps (a wrong update would be off by ~1e-2).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5),
               got, want)


def test_a_failing_process_takes_its_peers_down(tmp_path):
  """Process 1 fails at start; process 0, waiting for it, is killed."""
  pids = []
  with pytest.raises(AssertionError, match=r"killed by the test: \[0\]"
                     r"(.|\n)*process 1 \(exit [1-9](.|\n)*nope"):
    _launch(tmp_path / "workdir", 2, 4, tmp_path, {"num_train_steps": 1},
            extra_flags={1: ["--config.nope=1"]}, pids=pids)
  assert len(pids) == 2
  for pid in pids:  # reaped: no such process any more
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
