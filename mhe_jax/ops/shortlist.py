"""Label shortlists: inner-product nearest neighbours, exact or approximate.

Pure JAX (no Flax). The siblings of MHE that train against shortlisted hard
negatives (UniDEC, LightDXML; :mod:`mhe_jax.nn.unidec`,
:mod:`mhe_jax.nn.lightdxml`) search a table of label vectors ``keys_cd``
with example embeddings ``queries_qd`` for the labels of largest inner
product ``<q, k_c>`` (maximum inner-product search; for L2-normalised
vectors this is the cosine nearest neighbour).

* :func:`exact_search`: brute force, blocked over the labels with a running
  top-k merge, so memory is ``O(Q * block_size)`` whatever ``C`` is; exact.
* :func:`build_kmeans_index` + :func:`kmeans_search`: an inverted-file index
  over ``K = 2^D`` clusters of exactly ``M = ceil(C / K)`` slots, made by
  balanced hierarchical 2-means (each node split at the median of its
  2-means score, as PECOS/Parabel's balanced label trees), searched by
  scoring the ``K`` centroids and then only the members of the
  ``num_probe`` best clusters: ``O(Q * (K + num_probe * M) * d)`` instead of
  ``O(Q * C * d)``; approximate (recall < 1 when a true neighbour lives in an
  unprobed cluster).
* :func:`candidate_union` and :func:`membership`: the shared in-batch
  candidate set of a training step and which candidates are an example's
  labels.

Ties in :func:`exact_search` are broken by the smaller label (as
``jax.lax.top_k`` over all ``C`` scores would).

Example::

  keys_cd = jax.random.normal(jax.random.key(0), (10_000, 64))
  q_qd = jax.random.normal(jax.random.key(1), (32, 64))
  scores_qk, ids_qk = exact_search(q_qd, keys_cd, 10)
  index = build_kmeans_index(keys_cd, 128)
  approx_qk = kmeans_search(index, keys_cd, q_qd, 10, num_probe=8)[1]
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike

_NEG_INF = -jnp.inf


@functools.partial(jax.jit, static_argnames=("k", "block_size"))
def exact_search(queries_qd: ArrayLike, keys_cd: ArrayLike, k: int, *,
                 block_size: int = 8192) -> tuple[jax.Array, jax.Array]:
  """Exact top-k labels by inner product, blocked over the labels.

  Args:
    queries_qd: float ``[Q, d]``.
    keys_cd: float ``[C, d]`` label vectors.
    k: static ``1 <= k <= C``.
    block_size: labels scored at once; the ``[Q, block_size]`` score block
      is the largest temporary.

  Returns:
    ``(scores [Q, k] float32, ids [Q, k] int32)``, scores descending, ties by
    smaller id.
  """
  q_qd = jnp.asarray(queries_qd, jnp.float32)
  keys_cd = jnp.asarray(keys_cd, jnp.float32)
  num_keys = keys_cd.shape[0]
  if not 1 <= k <= num_keys:
    raise ValueError(f"k must be in [1, {num_keys}] (the number of keys), "
                     f"got {k}")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  if num_keys <= block_size:
    scores, ids = jax.lax.top_k(q_qd @ keys_cd.T, k)
    return scores, ids.astype(jnp.int32)
  num_blocks = -(-num_keys // block_size)
  padded = jnp.pad(keys_cd, ((0, num_blocks * block_size - num_keys), (0, 0)))
  blocks_nbd = padded.reshape(num_blocks, block_size, -1)
  num_q = q_qd.shape[0]

  def merge(carry, xs):
    best_s, best_i = carry
    block_bd, offset = xs
    ids_b = offset + jnp.arange(block_size, dtype=jnp.int32)
    s_qb = jnp.where(ids_b < num_keys, q_qd @ block_bd.T, _NEG_INF)
    # Earlier blocks hold smaller ids and come first: ties keep id order.
    all_s = jnp.concatenate([best_s, s_qb], axis=1)
    all_i = jnp.concatenate([best_i, jnp.broadcast_to(ids_b, s_qb.shape)], 1)
    top_s, pos = jax.lax.top_k(all_s, k)
    return (top_s, jnp.take_along_axis(all_i, pos, axis=1)), None

  init = (jnp.full((num_q, k), _NEG_INF, jnp.float32),
          jnp.full((num_q, k), -1, jnp.int32))
  offsets = jnp.arange(num_blocks, dtype=jnp.int32) * block_size
  (scores, ids), _ = jax.lax.scan(merge, init, (blocks_nbd, offsets))
  return scores, ids


class KMeansIndex(NamedTuple):
  """An inverted-file index over ``K`` clusters of ``M`` slots.

  Attributes:
    centroids: float32 ``[K, d]``, the mean of each cluster's members.
    members: int32 ``[K, M]`` label ids, -1 on padding slots (the
      ``K * M - C`` padding slots all sit in the last clusters).
  """

  centroids: jax.Array
  members: jax.Array


def _split_halves(x_nmd, valid_nm, iters):
  """Balanced 2-means of each node's points; returns the sort order."""
  n = x_nmd.shape[1]
  w_nm = valid_nm.astype(x_nmd.dtype)

  def means(weights_nm):
    total = jnp.einsum("nm,nmd->nd", weights_nm, x_nmd)
    return total / jnp.maximum(weights_nm.sum(1), 1.)[:, None]

  def order_for(c1_nd, c2_nd):
    # 2-means score: |x - c1|^2 - |x - c2|^2; padding sorts last.
    diff = 2. * jnp.einsum("nmd,nd->nm", x_nmd, c2_nd - c1_nd)
    norms_n = (c1_nd * c1_nd).sum(-1) - (c2_nd * c2_nd).sum(-1)
    diff = diff + norms_n[:, None]
    diff = jnp.where(valid_nm, diff, jnp.inf)
    return jnp.argsort(diff, axis=1, stable=True)

  # Initial split: along the direction from the node mean to its farthest
  # point (deterministic, no rng).
  mean_nd = means(w_nm)
  dist_nm = jnp.where(valid_nm, ((x_nmd - mean_nd[:, None]) ** 2).sum(-1), -1.)
  far_nd = jnp.take_along_axis(
      x_nmd, jnp.argmax(dist_nm, axis=1)[:, None, None], axis=1)[:, 0]
  order_nm = order_for(far_nd, 2. * mean_nd - far_nd)
  left_m = (jnp.arange(n) < n // 2).astype(x_nmd.dtype)
  def refine(_, order_nm):
    rank_nm = jnp.argsort(order_nm, axis=1)  # position of each point
    in_left = left_m[rank_nm] * w_nm
    in_right = (1. - left_m[rank_nm]) * w_nm
    return order_for(means(in_left), means(in_right))

  return jax.lax.fori_loop(0, iters, refine, order_nm)


@functools.partial(jax.jit, static_argnames=("num_clusters", "iters"))
def build_kmeans_index(keys_cd: ArrayLike, num_clusters: int, *,
                       iters: int = 4) -> KMeansIndex:
  """Balanced hierarchical 2-means clustering of the label vectors.

  The ``C`` labels (padded to ``K * M``) are split in halves ``D = log2 K``
  times; each split runs ``iters`` rounds of 2-means in which a node's points
  are sorted by ``|x - c_1|^2 - |x - c_2|^2`` and the first half goes left,
  so every cluster has exactly ``M`` slots and the shapes are static.

  Args:
    keys_cd: float ``[C, d]`` label vectors.
    num_clusters: ``K``, a power of two, ``2 <= K <= C``.
    iters: 2-means rounds per split.

  Returns:
    A :class:`KMeansIndex`; deterministic given the keys.
  """
  keys_cd = jnp.asarray(keys_cd, jnp.float32)
  num_keys = keys_cd.shape[0]
  depth = int(num_clusters).bit_length() - 1
  if num_clusters < 2 or 2 ** depth != num_clusters or num_clusters > num_keys:
    raise ValueError(f"num_clusters must be a power of two in [2, {num_keys}] "
                     f"(the number of keys), got {num_clusters}")
  slots = -(-num_keys // num_clusters)
  total = slots * num_clusters
  padded_cd = jnp.pad(keys_cd, ((0, total - num_keys), (0, 0)))
  perm_nm = jnp.arange(total, dtype=jnp.int32)[None]  # one node, all points
  for _ in range(depth):
    x_nmd = padded_cd[perm_nm]
    order_nm = _split_halves(x_nmd, perm_nm < num_keys, iters)
    perm_nm = jnp.take_along_axis(perm_nm, order_nm, axis=1)
    perm_nm = perm_nm.reshape(perm_nm.shape[0] * 2, -1)
  valid_km = perm_nm < num_keys
  members_km = jnp.where(valid_km, perm_nm, -1).astype(jnp.int32)
  w_km = valid_km.astype(jnp.float32)
  centroids_kd = jnp.einsum("km,kmd->kd", w_km, padded_cd[perm_nm])
  centroids_kd = centroids_kd / jnp.maximum(w_km.sum(1), 1.)[:, None]
  return KMeansIndex(centroids_kd, members_km)


@functools.partial(jax.jit, static_argnames=("k", "num_probe", "query_block"))
def kmeans_search(index: KMeansIndex, keys_cd: ArrayLike,
                  queries_qd: ArrayLike, k: int, *, num_probe: int,
                  query_block: int = 256) -> tuple[jax.Array, jax.Array]:
  """Approximate top-k: exact scores over the members of the probed clusters.

  Args:
    index: from :func:`build_kmeans_index` over ``keys_cd``.
    keys_cd: float ``[C, d]``, the vectors the index was built on (or newer
      ones; the clusters then reflect the old vectors).
    queries_qd: float ``[Q, d]``.
    k: static, ``1 <= k <= num_probe * M``.
    num_probe: clusters searched per query, ``1 <= num_probe <= K``.
    query_block: queries gathered at once (bounds the ``[block, num_probe *
      M, d]`` gather).

  Returns:
    ``(scores [Q, k], ids [Q, k])``, descending. When the probed clusters
    hold fewer than k labels, the missing entries are ``(-inf, -1)``; with
    ``num_probe * M - (K * M - C) >= k`` this cannot happen.
  """
  centroids_kd, members_km = index
  num_clusters, slots = members_km.shape
  if not 1 <= num_probe <= num_clusters:
    raise ValueError(f"num_probe must be in [1, {num_clusters}], got "
                     f"{num_probe}")
  if not 1 <= k <= num_probe * slots:
    raise ValueError(f"k must be in [1, num_probe * cluster size = "
                     f"{num_probe * slots}], got {k}")
  keys_cd = jnp.asarray(keys_cd, jnp.float32)
  q_qd = jnp.asarray(queries_qd, jnp.float32)
  _, probe_qp = jax.lax.top_k(q_qd @ centroids_kd.T, num_probe)

  def one(args):
    q_d, probe_p = args
    cand = members_km[probe_p].reshape(-1)  # [P * M]
    s = keys_cd[jnp.maximum(cand, 0)] @ q_d
    s = jnp.where(cand >= 0, s, _NEG_INF)
    top_s, pos = jax.lax.top_k(s, k)
    return top_s, jnp.where(top_s > _NEG_INF, cand[pos], -1)

  return jax.lax.map(one, (q_qd, probe_qp), batch_size=query_block)


def default_num_clusters(num_labels: int) -> int:
  """The power of two nearest ``sqrt(C)`` (at least 2, at most C)."""
  target = max(2., float(num_labels) ** 0.5)
  power = 2 ** round(math.log2(target))
  return int(min(max(power, 2), num_labels))


@functools.partial(jax.jit, static_argnames=("size"))
def candidate_union(ids: ArrayLike, size: int) -> jax.Array:
  """Sorted distinct non-negative ids of ``ids``, -1 padded to ``size``.

  Args:
    ids: int array of any shape (negative entries are ignored).
    size: static output length; must be at least the number of distinct
      non-negative ids (``ids.size + 1`` always is), else the largest ids
      are dropped.

  Returns:
    int32 ``[size]``: the distinct ids ascending, then -1.
  """
  flat = jnp.asarray(ids, jnp.int32).reshape(-1)
  big = jnp.iinfo(jnp.int32).max
  flat = jnp.where(flat >= 0, flat, big)  # padding sorts last
  uniq = jnp.unique(flat, size=size, fill_value=big)
  return jnp.where(uniq == big, -1, uniq).astype(jnp.int32)


@jax.jit
def membership(candidates_m: ArrayLike, labels_bl: ArrayLike) -> jax.Array:
  """bool ``[B, M]``: candidate m is one of example b's labels.

  Args:
    candidates_m: int ``[M]``, as :func:`candidate_union` returns (sorted
      non-negative ids first, -1 padding after).
    labels_bl: int ``[B, L]``, -1 padded.

  Returns:
    bool ``[B, M]``, never True on a -1 candidate.
  """
  cand = jnp.asarray(candidates_m, jnp.int32)
  labels_bl = jnp.asarray(labels_bl, jnp.int32)
  big = jnp.iinfo(jnp.int32).max
  key = jnp.where(cand >= 0, cand, big)  # ascending, padding last
  pos_bl = jnp.clip(jnp.searchsorted(key, labels_bl), 0, cand.shape[0] - 1)
  hit_bl = (labels_bl >= 0) & (cand[pos_bl] == labels_bl)
  rows = jnp.broadcast_to(jnp.arange(labels_bl.shape[0])[:, None],
                          labels_bl.shape)
  out = jnp.zeros((labels_bl.shape[0], cand.shape[0]), bool)
  return out.at[rows, pos_bl].max(hit_bl)
