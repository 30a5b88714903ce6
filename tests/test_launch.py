"""launch/: script syntax, usage errors, dry runs, and the AOT compile script."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = ("local.sh", "slurm_gpu.sbatch", "tpu_pod.sh")
CONFIG = "tests/tiny_config.py"


def _env(**extra):
  """The test environment without any cluster variables of the host."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "MHE_", "JAX_COORDINATOR"))}
  env.update(extra)
  return env


def _bash(script, *args, **env):
  return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO_ROOT,
                        env=_env(**env), capture_output=True, text=True,
                        timeout=30)


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax(script):
  out = subprocess.run(["bash", "-n", str(LAUNCH / script)],
                       capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  text = (LAUNCH / script).read_text()
  assert "set -euo pipefail" in text


@pytest.mark.parametrize("script,args", [
    ("local.sh", ()),
    ("local.sh", (CONFIG,)),
    ("local.sh", ("--dry-run", CONFIG)),
    ("local.sh", ("--config.x=1", "/tmp/w")),
    ("slurm_gpu.sbatch", ()),
    ("slurm_gpu.sbatch", ("--dry-run", CONFIG)),
    ("tpu_pod.sh", ()),
    ("tpu_pod.sh", ("--dry-run", "tpu", "zone", CONFIG)),
])
def test_missing_arguments_print_usage(script, args):
  out = _bash(script, *args)
  assert out.returncode == 2, out
  assert "Usage:" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  out = _bash(script, "--help")
  assert out.returncode == 0 and "Usage:" in out.stderr


def test_local_dry_run_passes_flags_through():
  out = _bash("local.sh", "--dry-run", CONFIG, "/tmp/w with space",
              "--config.num_train_steps=3", "--config.name=a b",
              PYTHON="/some/python")
  assert out.returncode == 0, out.stderr
  assert shlex.split(out.stdout) == [
      "/some/python", "-m", "mhe_jax.main", f"--config={CONFIG}",
      "--workdir=/tmp/w with space", "--config.num_train_steps=3",
      "--config.name=a b"]


def test_local_missing_config():
  out = _bash("local.sh", "--dry-run", "configs/nope.py", "/tmp/w")
  assert out.returncode == 2 and "config file not found" in out.stderr


def test_local_runs_the_trainer(tmp_path):
  out = _bash("local.sh", CONFIG, str(tmp_path), "--config.num_train_steps=2",
              "--config.checkpoint_every=0", "--config.data.num_train=256",
              "--config.data.num_test=64", PYTHON=sys.executable,
              JAX_PLATFORMS="cpu")
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "results.json").is_file()


def test_slurm_dry_run_auto_detect():
  out = _bash("slurm_gpu.sbatch", "--dry-run", CONFIG, "/shared/run",
              "--config.batch_size=512")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == "export MHE_JAX_DISTRIBUTED=1"
  assert not any("MHE_COORDINATOR_ADDRESS" in l for l in lines)
  assert shlex.split(lines[-1]) == [
      "srun", "--kill-on-bad-exit=1", "python", "-m", "mhe_jax.main",
      f"--config={CONFIG}", "--workdir=/shared/run", "--config.batch_size=512"]


def test_slurm_dry_run_per_node_sets_the_explicit_contract():
  out = _bash("slurm_gpu.sbatch", "--dry-run", "--per-node", CONFIG,
              "/shared/run", SLURM_JOB_ID="1234", SLURM_NTASKS="4",
              SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="4")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  exports = dict(l.removeprefix("export ").split("=", 1) for l in lines[:-1])
  assert exports["MHE_JAX_DISTRIBUTED"] == "1"
  assert exports["MHE_COORDINATOR_ADDRESS"].endswith(
      f":{61440 + 1234 % 4096}")  # JAX's own Slurm port rule
  assert exports["MHE_NUM_PROCESSES"] == "4"
  assert exports["MHE_LOCAL_DEVICE_IDS"] == "0,1,2,3"
  cmd = shlex.split(lines[-1])
  assert cmd[:3] == ["srun", "--kill-on-bad-exit=1", "bash"]
  assert "MHE_PROCESS_ID=\"$SLURM_PROCID\"" in cmd[4]
  assert cmd[-4:] == ["-m", "mhe_jax.main", f"--config={CONFIG}",
                      "--workdir=/shared/run"]
  # The per-task wrapper really sets MHE_PROCESS_ID from SLURM_PROCID.
  wrapped = subprocess.run(
      [*cmd[2:6], "sh", "-c", "echo $MHE_PROCESS_ID"], env=_env(SLURM_PROCID="3"),
      capture_output=True, text=True, timeout=30)
  assert wrapped.stdout.strip() == "3", wrapped


def test_slurm_per_node_rejects_several_tasks_per_node():
  out = _bash("slurm_gpu.sbatch", "--dry-run", "--per-node", CONFIG,
              "/shared/run", SLURM_JOB_ID="1", SLURM_NTASKS_PER_NODE="8")
  assert out.returncode == 2 and "--ntasks-per-node=1" in out.stderr


def test_slurm_outside_a_job_refuses_to_run():
  out = _bash("slurm_gpu.sbatch", CONFIG, "/shared/run")
  assert out.returncode == 2 and "not inside a Slurm job" in out.stderr


def test_tpu_dry_run():
  out = _bash("tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", CONFIG,
              "/mnt/shared/run 1", "--config.name=a b", TPU_PROJECT="proj")
  assert out.returncode == 0, out.stderr
  cmd = shlex.split(out.stdout)
  assert cmd[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
                     "--zone", "us-central2-b", "--worker=all"]
  assert cmd[9:11] == ["--project", "proj"]
  assert cmd[11] == "--command" and len(cmd) == 13
  remote = cmd[12]
  assert remote.startswith("cd ~/mhe_jax && MHE_JAX_DISTRIBUTED=1 ")
  # What the workers' shell will run, word by word.
  assert shlex.split(remote.split(" && ", 1)[1]) == [
      "MHE_JAX_DISTRIBUTED=1", "python3", "-m", "mhe_jax.main",
      f"--config={CONFIG}", "--workdir=/mnt/shared/run 1", "--config.name=a b"]


@pytest.mark.parametrize("workdir,match", [
    ("gs://bucket/run", "gcsfuse"), ("relative/run", "absolute path")])
def test_tpu_rejects_unshared_workdirs(workdir, match):
  out = _bash("tpu_pod.sh", "--dry-run", "tpu", "zone", CONFIG, workdir)
  assert out.returncode == 2 and match in out.stderr


def _aot(*flags):
  return subprocess.run(
      [sys.executable, str(LAUNCH / "aot_compile.py"), f"--config={CONFIG}",
       *flags], cwd=REPO_ROOT, env=_env(JAX_PLATFORMS="cpu", XLA_FLAGS=""),
      capture_output=True, text=True, timeout=120)


def test_aot_compile_prints_memory_and_flops():
  out = _aot("--num_devices=8", "--mesh_shape=2,4", "--config.head.type=vanilla")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mesh: {'data': 2, 'classes': 4} on 8 cpu devices" in out.stdout
  values = {m[0]: int(m[1]) for m in
            re.findall(r"^\s+(\w+)_bytes: (\d+)", out.stdout, flags=re.M)}
  for key in ("argument", "output", "temp", "peak"):
    assert values[key] > 0, (key, out.stdout)
  flops = float(re.search(r"^flops: (\S+)", out.stdout, flags=re.M)[1])
  assert flops > 0
  # The vanilla classifier is sharded over 'classes': each device holds less
  # than one full copy of the state.
  state = int(re.search(r"^state bytes .*?: (\d+)", out.stdout, flags=re.M)[1])
  assert values["argument"] < state


def test_aot_compile_bad_mesh():
  out = _aot("--num_devices=8", "--mesh_shape=3,-1")
  assert out.returncode != 0 and "does not divide the 8 devices" in out.stderr
