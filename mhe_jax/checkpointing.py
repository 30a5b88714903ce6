"""Orbax checkpoints: atomic, keep-N, with the data iterator's position.

A checkpoint holds the whole training state pytree (parameters, optimiser
state, step; saved with ``StandardSave``, restored against a sharded abstract
target) and the data iterator's JSON state. Orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact. :meth:`Checkpointer.restore_latest` walks
back from the newest step and skips (with a warning) any checkpoint that
fails to restore, e.g. one damaged on disk; it is renamed to
``<step>.unreadable`` (kept, not deleted) so that step can be saved again.

Example::

  ckpt = Checkpointer(workdir / "checkpoints", keep=3)
  ckpt.save(step, state, data_state)
  restored = ckpt.restore_latest(abstract_state)   # None on a fresh workdir
  if restored:
    step, state, data_state = restored
"""

from __future__ import annotations

import pathlib
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


def _to_savable(tree: Any) -> Any:
  """Typed PRNG key arrays -> their raw uint32 data (orbax saves arrays)."""
  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      return jax.random.key_data(x)
    return x
  return jax.tree.map(one, tree)


def _abstract_savable(tree: Any) -> Any:
  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.eval_shape(jax.random.key_data, x)
      sharding = getattr(x, "sharding", None)
      return jax.ShapeDtypeStruct(data.shape, data.dtype,
                                  sharding=_key_data_sharding(sharding, data))
    return x
  return jax.tree.map(one, tree)


def _key_data_sharding(sharding, data):
  if sharding is None:
    return None
  spec = tuple(sharding.spec) + (None,) * (data.ndim - len(sharding.spec))
  return jax.sharding.NamedSharding(sharding.mesh,
                                    jax.sharding.PartitionSpec(*spec))


def _from_savable(tree: Any, like: Any) -> Any:
  def one(x, ref):
    if jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)
                                      if isinstance(ref, jax.Array) else None)
    return x
  return jax.tree.map(one, tree, like)


class Checkpointer:
  """Saves and restores (step, state pytree, data-iterator state)."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "data"))

  def save(self, step: int, state: Any, data_state: dict[str, Any],
           *, force: bool = True) -> None:
    """Writes checkpoint ``step`` atomically and waits until it is on disk."""
    self.manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_to_savable(state)),
            data=ocp.args.JsonSave(data_state)),
        force=force)
    self.manager.wait_until_finished()

  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any):
    """``(step, state, data_state)`` of the newest readable checkpoint.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings, the
        layout to restore into.

    Returns:
      None when there is no readable checkpoint.
    """
    target = _abstract_savable(abstract_state)
    for step in reversed(self.all_steps()):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=ocp.args.JsonRestore()))
        state = _from_savable(restored["state"], abstract_state)
        _check_finite_structure(state, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        # A damaged or partial checkpoint: say so and fall back to an older
        # one rather than losing the run.
        aside = self._set_aside(step)
        logging.warning(
            "checkpoint %d in %s is unreadable, skipping it (moved to %s): "
            "%s: %s", step, self.directory, aside, type(e).__name__, e)
        continue
      return step, state, dict(restored["data"])
    return None

  def _set_aside(self, step: int) -> pathlib.Path:
    """Renames an unreadable step directory so the step can be saved again.

    Nothing is deleted: the damaged files stay for inspection.
    """
    src = self.directory / str(step)
    dst = self.directory / f"{step}.unreadable"
    n = 1
    while dst.exists():
      n += 1
      dst = self.directory / f"{step}.unreadable{n}"
    if jax.process_index() == 0 and src.exists():
      src.rename(dst)
    self.manager.reload()
    return dst

  def close(self) -> None:
    self.manager.close()


def _check_finite_structure(state, abstract_state):
  """Raises if shapes or dtypes differ from the target (a foreign checkpoint)."""
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract_state)):
    if np.shape(got) != tuple(want.shape):
      raise ValueError(f"restored shape {np.shape(got)} != expected {want.shape}")
