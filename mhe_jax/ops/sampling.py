"""Group sampling for Multi-Head Sampling (MHS), on device with fixed shapes.

MHS (Liang et al., TPAMI 2024, Sec. 3.4) views the full classifier as
``num_groups`` groups of consecutive classes and, at each training step,
computes logits only for a sample of groups: every group that holds a ground
truth label of the batch, plus uniformly random other groups. The reference
implementation draws the sample with Python loops on the host; here it is one
jittable function of an rng key, so a train step never leaves the device.

Algorithm. Every group gets a key: ``2`` if it holds a true label, else an
independent ``Uniform[0, 1)`` draw, and the ``num_sampled`` largest keys win
(``lax.top_k``). True groups therefore always come first (ascending, since
``top_k`` breaks ties by the lower index), and the remaining places go to a
uniformly random subset of the other groups, in random order. Cost
``O(num_groups)`` per step, independent of the batch and the group size.

Example::

  groups_n = jnp.array([3, 7, 3, -1])                 # -1 = no label
  ids_s, slots_n = sample_groups(groups_n, num_groups=50, num_sampled=6,
                                 rng=jax.random.key(0))
  # ids_s[:2] == [3, 7]; ids_s[2:] are 4 distinct random groups;
  # slots_n == [0, 1, 0, -1], i.e. ids_s[slots_n[i]] == groups_n[i].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import sharding as sharding_lib

ArrayLike = jax.typing.ArrayLike


def sample_groups(true_groups: ArrayLike, num_groups: int, num_sampled: int,
                  rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Samples distinct groups: all true groups plus uniform random others.

  Args:
    true_groups: int ``[...]`` group ids in ``[0, num_groups)``, -1 for none
      (padding). Under ``jit`` out-of-range ids are treated as padding; when
      concrete they raise.
    num_groups: G, the number of groups.
    num_sampled: S, the static number of groups returned, with
      ``min(true_groups.size, G) <= S <= G`` so that every true group fits
      whatever the values of ``true_groups``.
    rng: a PRNG key; the sample is a deterministic function of it and of
      ``true_groups``.

  Returns:
    ``(group_ids [S] int32, slots [...] int32)``: ``group_ids`` are distinct,
    the true groups first in ascending order, then random other groups;
    ``slots`` gives for each entry of ``true_groups`` its index in
    ``group_ids`` (``group_ids[slots] == true_groups``), -1 for padding.
  """
  num_groups, num_sampled = int(num_groups), int(num_sampled)
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  true_groups_arr = jnp.asarray(true_groups)
  if not jnp.issubdtype(true_groups_arr.dtype, jnp.integer):
    raise TypeError(
        f"true_groups must be integers, got dtype {true_groups_arr.dtype}")
  needed = min(true_groups_arr.size, num_groups)
  if not needed <= num_sampled <= num_groups:
    raise ValueError(
        f"num_sampled must lie in [min(true_groups.size, num_groups), "
        f"num_groups] = [{needed}, {num_groups}] so that every true group "
        f"fits, got {num_sampled}")
  if not isinstance(true_groups, jax.core.Tracer):
    arr = np.asarray(true_groups)
    bad = (arr < -1) | (arr >= num_groups)
    if bad.any():
      pos = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"true_groups must lie in [-1, {num_groups}); got {arr[pos]} at "
          f"index {pos}")
  return _sample_groups(true_groups_arr, rng, num_groups, num_sampled)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sample_groups(true_groups, rng, num_groups, num_sampled):
  # The sample is shared by the whole batch, so batch-sharded labels are
  # gathered to build it (explicit meshes need this said; elsewhere it is a
  # no-op); the slots keep the labels' sharding.
  true_groups = true_groups.astype(jnp.int32)
  labels = sharding_lib.replicated(true_groups)
  flat_n = labels.reshape(-1)
  valid_n = (flat_n >= 0) & (flat_n < num_groups)
  safe_n = jnp.where(valid_n, flat_n, num_groups)  # out of bounds: dropped
  is_true_g = jnp.zeros((num_groups,), bool).at[safe_n].set(True, mode="drop")
  key_g = jnp.where(is_true_g, 2., jax.random.uniform(rng, (num_groups,)))
  _, group_ids_s = jax.lax.top_k(key_g, num_sampled)
  group_ids_s = group_ids_s.astype(jnp.int32)
  slot_of_g = jnp.full((num_groups,), -1, jnp.int32).at[group_ids_s].set(
      jnp.arange(num_sampled, dtype=jnp.int32))
  valid = (true_groups >= 0) & (true_groups < num_groups)
  slots = slot_of_g.at[jnp.where(valid, true_groups, 0)].get(
      out_sharding=sharding_lib.explicit_sharding(true_groups))
  slots = jnp.where(valid, slots, -1)
  return group_ids_s, slots
