"""Test setup: 8 fake CPU devices, set before JAX initialises a backend."""

import os
import pathlib

# Must run before any JAX computation. XLA_FLAGS covers subprocesses too.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def data_dir() -> pathlib.Path:
  """The real-data directory: $MHE_DATA_DIR or ../shared/data."""
  env = os.environ.get("MHE_DATA_DIR")
  path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
  return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = data_dir()
  if not path.is_dir():
    pytest.fail(f"real data directory not found: {path} (set MHE_DATA_DIR)")
  return path
