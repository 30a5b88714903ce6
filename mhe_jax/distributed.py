"""The one place that calls ``jax.distributed.initialize``.

Multi-process runs are opted into by the environment (big_vision's
``BV_JAX_INIT``, maxtext's gating): set ``MHE_JAX_DISTRIBUTED=1`` and either
nothing else (Slurm, TPU pods and other clusters JAX auto-detects) or the
explicit contract

  MHE_COORDINATOR_ADDRESS=host:port  MHE_NUM_PROCESSES=N  MHE_PROCESS_ID=i
  MHE_LOCAL_DEVICE_IDS=0,1   (optional)

Without ``MHE_JAX_DISTRIBUTED`` this is a no-op and JAX runs single-process.
Errors from ``initialize`` propagate: a misconfigured cluster must fail, not
silently train one process on its own.
"""

from __future__ import annotations

import os

from absl import logging
import jax

_initialized = False


def initialize() -> bool:
  """Initializes multi-process JAX when the environment asks for it."""
  global _initialized
  if _initialized or os.environ.get("MHE_JAX_DISTRIBUTED", "0") in ("", "0"):
    return _initialized
  kwargs = {}
  if "MHE_COORDINATOR_ADDRESS" in os.environ:
    missing = [k for k in ("MHE_NUM_PROCESSES", "MHE_PROCESS_ID")
               if k not in os.environ]
    if missing:
      raise ValueError(f"MHE_COORDINATOR_ADDRESS is set but {missing} are not")
    kwargs = dict(coordinator_address=os.environ["MHE_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["MHE_NUM_PROCESSES"]),
                  process_id=int(os.environ["MHE_PROCESS_ID"]))
    if os.environ.get("MHE_LOCAL_DEVICE_IDS"):
      kwargs["local_device_ids"] = [
          int(i) for i in os.environ["MHE_LOCAL_DEVICE_IDS"].split(",")]
  jax.distributed.initialize(**kwargs)
  _initialized = True
  logging.info("jax.distributed initialised: process %d of %d, %d devices",
               jax.process_index(), jax.process_count(), jax.device_count())
  return True
