r"""Ahead-of-time compile of the train step for a target mesh, on fake devices.

Checks, before a job is queued, that a config's train step compiles on a
mesh of the target size and how much memory each device needs: the trainer
(:class:`mhe_jax.train.Trainer`) is built on ``--num_devices`` fake CPU
devices with ``config.mesh.shape = --mesh_shape``, and its jitted, donating
train step is lowered and compiled against abstract (``ShapeDtypeStruct``,
sharded) state and batch: no parameter is allocated and no step runs.

Usage::

  python launch/aot_compile.py --config=configs/default.py \
      --num_devices=8 --mesh_shape=2,4 [--config.batch_size=512 ...]

Prints the mesh, the per-device memory of the compiled step (arguments,
outputs, XLA temporaries, generated code; from ``compiled.memory_analysis()``)
and its FLOPs (``compiled.cost_analysis()``). The numbers are those of the
XLA *CPU* compiler: argument and output bytes (the sharded state and batch)
carry over to GPU/TPU exactly, temporaries and FLOPs are an estimate of the
accelerator's. The config's dataset is loaded (its shapes size the batch).
"""

from __future__ import annotations

import math
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 8, "Fake CPU devices to compile for (the target's total).",
    lower_bound=1)
_MESH_SHAPE = flags.DEFINE_list(
    "mesh_shape", None, "Mesh shape over config.mesh.axes, e.g. 2,4 (one -1 "
    "takes the rest); default: the config's mesh.shape.")
flags.mark_flags_as_required(["config"])


def _parse_mesh_shape(values: list[str]) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(
        f"--mesh_shape must be comma-separated integers, got {values}") from None


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  raise AssertionError


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Fake devices: set before anything touches a JAX backend (imports do not).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", _NUM_DEVICES.value)
  from mhe_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from mhe_jax import train  # pylint: disable=g-import-not-at-top
  from mhe_jax import writers  # pylint: disable=g-import-not-at-top
  writers.quiet_library_logs()

  config = _CONFIG.value
  if _MESH_SHAPE.value is not None:
    shape = _parse_mesh_shape(_MESH_SHAPE.value)
    if len(shape) != len(config.mesh.axes):
      raise app.UsageError(f"--mesh_shape={shape} needs one size per mesh "
                           f"axis {tuple(config.mesh.axes)}")
    config.mesh.shape = shape
  if jax.device_count() != _NUM_DEVICES.value:
    raise RuntimeError(f"asked for {_NUM_DEVICES.value} fake CPU devices but "
                       f"JAX has {jax.device_count()}: was a backend started "
                       "before main()?")

  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(config, workdir)
    mesh = trainer.mesh
    spec = dict(trainer.data.train.element_spec)
    abstract_batch = {}
    for key, field in spec.items():
      shape = (config.batch_size, *field.shape)
      abstract_batch[key] = jax.ShapeDtypeStruct(
          shape, field.dtype,
          sharding=sharding_lib.batch_sharding(mesh, trainer.rules, len(shape)))
    abstract_batch["mask"] = jax.ShapeDtypeStruct(
        (config.batch_size,), bool,
        sharding=sharding_lib.batch_sharding(mesh, trainer.rules, 1))
    rng = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh):
      lowered = trainer._train_step.lower(  # pylint: disable=protected-access
          trainer.abstract_state, abstract_batch, rng)
      compiled = lowered.compile()
    trainer.checkpointer.close()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize
                    for x in jax.tree.leaves(trainer.abstract_state))
  print(f"config: {config.name}")
  print(f"mesh: {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} devices")
  print(f"global batch: {config.batch_size} "
        f"({', '.join(f'{k} {v.shape} {v.dtype}' for k, v in abstract_batch.items())})")
  print(f"parameters: {trainer.num_params}")
  print(f"state bytes (one unsharded copy): {state_bytes} "
        f"({_fmt_bytes(state_bytes)})")
  print("per-device memory of the compiled train step:")
  rows = [("argument", mem.argument_size_in_bytes),
          ("output", mem.output_size_in_bytes),
          ("alias", mem.alias_size_in_bytes),
          ("temp", mem.temp_size_in_bytes),
          ("generated_code", mem.generated_code_size_in_bytes)]
  for name, value in rows:
    print(f"  {name}_bytes: {value} ({_fmt_bytes(value)})")
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  print(f"  peak_bytes: {peak} ({_fmt_bytes(peak)}; argument + output - "
        "alias + temp)")
  print(f"flops: {cost.get('flops', float('nan')):.6g}")
  print(f"bytes_accessed: {cost.get('bytes accessed', float('nan')):.6g}")


if __name__ == "__main__":
  app.run(main)
