"""An exponential moving average of the parameters, kept in the optimiser.

``config.optimizer.ema_decay > 0`` makes the trainer chain
:func:`param_ema` after its optimiser: after every update the average moves
towards the new parameters,

  ``avg <- d_t * avg + (1 - d_t) * params``,  ``d_t = min(decay, (1 + t) / (10 + t))``

(``t`` = 0, 1, ... the update count; the ramp lets early averages follow the
fast-moving start instead of remembering the initialisation). The average
lives in the optimiser state, so it is sharded like the parameters,
checkpointed with them, restored on resume and kept out of a step whose loss
or gradient was not finite (the trainer drops that whole update). Training
reads the raw parameters; evaluation (:func:`averaged_state`) and
:func:`mhe_jax.inference.load` use the average.

Example::

  tx = optax.chain(optax.adam(1e-3), averaging.param_ema(0.999))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  ...                                   # training steps
  state = averaging.averaged_state(nnx.state((model, optimizer)))
  # state[0]: the model's state with every Param replaced by its average
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import optax


class ParamEmaState(NamedTuple):
  """:func:`param_ema`'s state: the update count and the average."""
  count: jax.Array
  average: Any


def decay_at(decay: float, count: jax.Array) -> jax.Array:
  """``min(decay, (1 + t) / (10 + t))``, the weight of the old average at
  update ``t`` (0-based)."""
  t = jnp.asarray(count, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1. + t) / (10. + t))


def param_ema(decay: float) -> optax.GradientTransformation:
  """Tracks an exponential moving average of the updated parameters.

  The updates pass through unchanged; chain it last, so that
  ``params + updates`` are the parameters the step leaves.

  Args:
    decay: in ``[0, 1)``; the average's horizon is ~``1 / (1 - decay)``
      updates.
  """
  decay = float(decay)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"ema decay must be in [0, 1), got {decay}")

  def init(params):
    return ParamEmaState(jnp.zeros([], jnp.int32),
                         jax.tree.map(lambda p: jnp.array(p, copy=True),
                                      params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("param_ema needs the parameters: call "
                       "update(updates, state, params)")
    new_params = optax.apply_updates(params, updates)
    d = decay_at(decay, state.count)
    average = jax.tree.map(
        lambda a, p: (d * a + (1. - d) * p).astype(a.dtype),
        state.average, new_params)
    return updates, ParamEmaState(state.count + 1, average)

  return optax.GradientTransformation(init, update)


def with_ema(tx: optax.GradientTransformation,
             decay: float) -> optax.GradientTransformation:
  """``tx`` followed by :func:`param_ema` (its state at index 1)."""
  return optax.chain(tx, param_ema(decay))


def optimizer_item(average: Any) -> dict[str, Any]:
  """A partial optimiser state holding only ``average`` where
  :func:`with_ema` keeps it (e.g. a restore target for just the average)."""
  return {"opt_state": {1: {"average": average}}}


def average_of(state: nnx.State) -> nnx.State:
  """The average's state in ``nnx.state((model, optimizer))`` of an
  optimiser built with :func:`with_ema`."""
  try:
    return state[1]["opt_state"][1]["average"]
  except (KeyError, IndexError, TypeError) as e:
    raise ValueError("the optimiser state holds no parameter average "
                     "(an optimiser built without with_ema)") from e


def replace_params(model_state: nnx.State, average: nnx.State) -> nnx.State:
  """``model_state`` with every Param's value taken from ``average`` (the
  same tree of Params, e.g. :func:`average_of`); nothing is copied and
  ``model_state`` is left as it was."""
  params = nnx.filter_state(model_state, nnx.Param)
  params = jax.tree.map(lambda v: v, params)  # new Variables, same arrays
  nnx.replace_by_pure_dict(params, nnx.to_pure_dict(average))
  return nnx.merge_state(model_state, params)


def averaged_state(state: nnx.State) -> nnx.State:
  """``nnx.state((model, optimizer))`` with the model's Params replaced by
  their averages (the optimiser part unchanged; no array is copied)."""
  out = jax.tree.map(lambda x: x, state)
  out[0] = replace_params(state[0], average_of(state))
  return out
