"""User-item interaction logs for next-item recommendation, split leave-one-out.

Two file layouts are read (whitespace-separated decimal integer ids):

* ``pairs``: one interaction per line, ``user item`` (the BERT4Rec / SASRec
  files, e.g. ``beauty.txt``), or ``user item timestamp``. Each user's lines
  are contiguous. Without timestamps the lines of a user are in time order;
  with them, each user's items are sorted by timestamp (stable, so equal
  timestamps keep file order). All lines have the same number of columns.
* ``sequences``: one line per user, ``user item item ...`` in time order
  (the S3-Rec / RecBole ``*.txt`` sequence files); a user appears on one line
  only.

``layout='auto'`` takes ``pairs`` when every line has 2 columns (or every line
3), else ``sequences``; give the layout explicitly for a file of 3-column
sequence lines.

Ids. Users keep the order of their first line (dense user ``u`` is the
``u``-th user of the file). Items get dense ids ``0 .. C-1`` in increasing
order of the original id (``item_order='sorted'``, the default: the BERT4Rec
files' 1-based ids ``1 .. C`` become ``0 .. C-1``) or in order of first
appearance (``item_order='first_seen'``). :class:`Interactions` keeps the
maps both ways (:attr:`~Interactions.item_ids` dense -> original,
:meth:`~Interactions.item_index` original -> dense; the same for users).

Repeats. A user's item equal to the same user's previous item (in time order)
is, by default, an error (``repeats='error'``): in the pairs layout it is
usually a duplicated line. ``repeats='keep'`` keeps such interactions,
``repeats='drop'`` drops the second one (and counts it in the summary).
Non-consecutive repeats (a user buying an item again later) are always kept.

Leave-one-out (:func:`leave_one_out`). Per user with ``n >= 3`` items
``i_1 .. i_n``: the training history is ``i_1 .. i_{n-2}``, the validation
example has input ``i_1 .. i_{n-2}`` and target ``i_{n-1}``, the test example
has input ``i_1 .. i_{n-1}`` (the validation item included) and target
``i_n``. Users with fewer than 3 items (``short_users``): ``'train'`` (the
default) keeps their items as training history only (a user with 1 item adds
no training pair), ``'drop'`` leaves them out entirely; either way they are in
no evaluation set and :class:`LeaveOneOutSplit` counts them.

Ids and timestamps are int64 (up to ``2**63 - 1``, so nanosecond Unix times
fit).

Errors are :class:`~mhe_jax.data.formats.FormatError` naming the file and the
1-based line: a non-integer, negative or beyond-int64 id, a wrong number of
columns, an empty file, a pairs user whose lines are not contiguous, a user
on two sequence lines, a sequence line without items, a consecutive repeat
under ``repeats='error'``.

Example::

  from mhe_jax.data import interactions

  log = interactions.read_interactions("amazon_beauty/interactions.txt")
  log.num_users, log.num_items          # 40226, 54542
  split = interactions.leave_one_out(log)
  split.train.sequence(0)               # int32 dense item ids, oldest first
  split.test.targets[:3], split.summary()
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Literal

import numpy as np

from mhe_jax.data.formats import FormatError
from mhe_jax.data.formats import _read_lines  # pylint: disable=protected-access

PathLike = str | os.PathLike

_INT_RE = re.compile(r"\d+", re.ASCII)  # non-negative decimal
_INT64_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Sequences:
  """Variable-length int sequences stored flat (a CSR row layout).

  Attributes:
    values: int32 ``[total]``, sequence ``u`` is
      ``values[offsets[u]:offsets[u + 1]]``.
    offsets: int64 ``[N + 1]``, non-decreasing, ``offsets[0] == 0``.
  """

  values: np.ndarray
  offsets: np.ndarray

  @classmethod
  def from_lists(cls, seqs) -> Sequences:
    """From an iterable of int sequences."""
    seqs = [np.asarray(s, np.int32).reshape(-1) for s in seqs]
    lengths = np.array([len(s) for s in seqs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = (np.concatenate(seqs).astype(np.int32) if seqs and offsets[-1]
              else np.zeros(0, np.int32))
    return cls(values, offsets)

  def __len__(self) -> int:
    return self.offsets.shape[0] - 1

  @property
  def lengths(self) -> np.ndarray:
    """int64 ``[N]``."""
    return np.diff(self.offsets)

  def sequence(self, u: int) -> np.ndarray:
    """Sequence ``u``, int32 (a view)."""
    return self.values[self.offsets[u]:self.offsets[u + 1]]

  def to_lists(self) -> list[list[int]]:
    return [self.sequence(u).tolist() for u in range(len(self))]

  def select(self, rows: np.ndarray) -> Sequences:
    """Sequences ``rows`` (int ``[M]``) in that order."""
    return Sequences.from_lists([self.sequence(int(u)) for u in rows])


@dataclasses.dataclass(frozen=True)
class Interactions:
  """A whole interaction log, each user's items in time order.

  Attributes:
    sequences: per dense user, the dense item ids, oldest first.
    user_ids: int64 ``[U]``: the original id of each dense user.
    item_ids: int64 ``[C]``: the original id of each dense item.
    path: the file read ("" when built in memory).
    repeats_dropped: consecutive repeats dropped (``repeats='drop'``).
  """

  sequences: Sequences
  user_ids: np.ndarray
  item_ids: np.ndarray
  path: str = ""
  repeats_dropped: int = 0

  @property
  def num_users(self) -> int:
    return len(self.sequences)

  @property
  def num_items(self) -> int:
    return int(self.item_ids.shape[0])

  @property
  def num_interactions(self) -> int:
    return int(self.sequences.values.shape[0])

  def item_index(self) -> dict[int, int]:
    """Original item id -> dense id."""
    return {int(o): d for d, o in enumerate(self.item_ids)}

  def user_index(self) -> dict[int, int]:
    """Original user id -> dense id."""
    return {int(o): d for d, o in enumerate(self.user_ids)}

  def item_counts(self) -> np.ndarray:
    """int64 ``[C]``: interactions per item over the whole log."""
    return np.bincount(self.sequences.values,
                       minlength=self.num_items).astype(np.int64)


def _parse_ids(path, lineno: int, line: str) -> list[int]:
  fields = line.split()
  for f in fields:
    if not _INT_RE.fullmatch(f):
      raise FormatError(path, lineno, f"{f!r} is not a non-negative integer id")
    if len(f) > 18 and int(f) > _INT64_MAX:
      raise FormatError(path, lineno, f"id {f} does not fit in int64 (at most "
                        f"{_INT64_MAX})")
  return [int(f) for f in fields]


def read_interactions(
    path: PathLike,
    *,
    layout: Literal["auto", "pairs", "sequences"] = "auto",
    item_order: Literal["sorted", "first_seen"] = "sorted",
    repeats: Literal["error", "keep", "drop"] = "error",
    encoding: str = "utf-8",
) -> Interactions:
  """Reads an interaction log (see the module docstring for the layouts).

  Args:
    path: the file.
    layout: ``'pairs'``, ``'sequences'`` or ``'auto'``.
    item_order: dense item ids by increasing original id, or first
      appearance (file order, after the per-user timestamp sort).
    repeats: what to do with an item equal to the user's previous item.
    encoding: text encoding.

  Returns:
    The log as :class:`Interactions`.

  Raises:
    FormatError: see the module docstring.
    ValueError: an unknown ``layout``, ``item_order`` or ``repeats``.
  """
  if layout not in ("auto", "pairs", "sequences"):
    raise ValueError(f"layout must be 'auto', 'pairs' or 'sequences', got "
                     f"{layout!r}")
  if item_order not in ("sorted", "first_seen"):
    raise ValueError(f"item_order must be 'sorted' or 'first_seen', got "
                     f"{item_order!r}")
  if repeats not in ("error", "keep", "drop"):
    raise ValueError(f"repeats must be 'error', 'keep' or 'drop', got "
                     f"{repeats!r}")
  lines, _ = _read_lines(path, encoding)
  rows = []  # (1-based line, ids)
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      raise FormatError(path, lineno, "blank line")
    rows.append((lineno, _parse_ids(path, lineno, line)))
  widths = {len(ids) for _, ids in rows}
  if layout == "auto":
    layout = "pairs" if widths in ({2}, {3}) else "sequences"

  users: list[int] = []
  seqs: list[list[int]] = []
  item_lines: list[list[int]] = []  # the line of each item, for errors
  if layout == "pairs":
    width = len(rows[0][1])
    if width not in (2, 3):
      raise FormatError(path, rows[0][0], f"{width} columns; the pairs layout "
                        "has 'user item' or 'user item timestamp'")
    first_line: dict[int, int] = {}
    stamps: list[list[int]] = []
    for lineno, ids in rows:
      if len(ids) != width:
        raise FormatError(path, lineno, f"{len(ids)} columns, expected "
                          f"{width} (as on line {rows[0][0]})")
      user = ids[0]
      if not users or users[-1] != user:
        if user in first_line:
          raise FormatError(path, lineno, f"user {user} again after other "
                            f"users (first on line {first_line[user]}): a "
                            "user's lines must be contiguous")
        first_line[user] = lineno
        users.append(user)
        seqs.append([])
        item_lines.append([])
        stamps.append([])
      seqs[-1].append(ids[1])
      item_lines[-1].append(lineno)
      if width == 3:
        stamps[-1].append(ids[2])
    if width == 3:
      for u, ts in enumerate(stamps):
        order = np.argsort(np.asarray(ts, np.int64), kind="stable")
        seqs[u] = [seqs[u][i] for i in order]
        item_lines[u] = [item_lines[u][i] for i in order]
  else:
    first_line = {}
    for lineno, ids in rows:
      if len(ids) < 2:
        raise FormatError(path, lineno, "a sequence line needs a user and at "
                          "least one item")
      user = ids[0]
      if user in first_line:
        raise FormatError(path, lineno, f"user {user} on a second line (first "
                          f"on line {first_line[user]})")
      first_line[user] = lineno
      users.append(user)
      seqs.append(ids[1:])
      item_lines.append([lineno] * (len(ids) - 1))

  dropped = 0
  for u, seq in enumerate(seqs):
    keep = [0]
    for j in range(1, len(seq)):
      if seq[j] == seq[j - 1]:
        if repeats == "error":
          raise FormatError(
              path, item_lines[u][j],
              f"user {users[u]} has item {seq[j]} twice in a row (previous "
              f"on line {item_lines[u][j - 1]}); pass repeats='keep' or "
              "'drop' if that is intended")
        if repeats == "drop":
          dropped += 1
          continue
      keep.append(j)
    if len(keep) != len(seq):
      seqs[u] = [seq[j] for j in keep]

  flat = np.fromiter((i for s in seqs for i in s), np.int64)
  if item_order == "sorted":
    item_ids, dense = np.unique(flat, return_inverse=True)
  else:
    uniq, first, inverse = np.unique(flat, return_index=True,
                                     return_inverse=True)
    order = np.argsort(first, kind="stable")  # dense id -> position in uniq
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    item_ids, dense = uniq[order], rank[inverse]
  lengths = np.array([len(s) for s in seqs], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  return Interactions(
      Sequences(dense.astype(np.int32).reshape(-1), offsets),
      np.asarray(users, np.int64), item_ids.astype(np.int64),
      path=os.fspath(path), repeats_dropped=dropped)


@dataclasses.dataclass(frozen=True)
class EvalExamples:
  """Leave-one-out evaluation examples (validation or test), one per user.

  Attributes:
    users: int64 ``[N]`` dense user of each example.
    inputs: the input sequences (every earlier item of the user, oldest
      first; the model may keep only the last ``max_len``).
    targets: int32 ``[N]`` the held-out next item.
  """

  users: np.ndarray
  inputs: Sequences
  targets: np.ndarray

  def __len__(self) -> int:
    return int(self.targets.shape[0])


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplit:
  """The leave-one-out split of an :class:`Interactions` log.

  Attributes:
    train: training histories, one per kept user (``train_users``).
    train_users: int64 ``[N_train]`` dense user of each training history.
    validation: second-to-last items as targets.
    test: last items as targets, the validation item in the input.
    num_items: C.
    num_users: users in the log.
    num_short_users: users with fewer than 3 items.
    short_users: the policy applied to them, ``'train'`` or ``'drop'``.
    item_counts: int64 ``[C]`` interactions per item over the whole log
      (the popularity used for sampled negatives).
  """

  train: Sequences
  train_users: np.ndarray
  validation: EvalExamples
  test: EvalExamples
  num_items: int
  num_users: int
  num_short_users: int
  short_users: str
  item_counts: np.ndarray

  def summary(self) -> dict[str, int | str]:
    """Counts of users and examples, JSON-able."""
    return {"num_users": self.num_users, "num_items": self.num_items,
            "num_train_users": int(self.train_users.shape[0]),
            "num_train_interactions": int(self.train.values.shape[0]),
            "num_eval_users": len(self.test),
            "num_short_users": self.num_short_users,
            "short_users": self.short_users}


def leave_one_out(log: Interactions, *,
                  short_users: Literal["train", "drop"] = "train"
                  ) -> LeaveOneOutSplit:
  """Splits each user's sequence: last item test, second-to-last validation.

  Args:
    log: the interactions.
    short_users: users with fewer than 3 items are kept as training history
      only (``'train'``) or dropped (``'drop'``).

  Returns:
    The :class:`LeaveOneOutSplit` (see the module docstring).
  """
  if short_users not in ("train", "drop"):
    raise ValueError(f"short_users must be 'train' or 'drop', got "
                     f"{short_users!r}")
  seqs = log.sequences
  lengths = seqs.lengths
  long_u = np.flatnonzero(lengths >= 3)
  short = lengths < 3
  train_u = (np.arange(len(seqs)) if short_users == "train" else long_u)
  # Training history: all but the last two items (all items of short users).
  ends = seqs.offsets[1:] - np.where(short, 0, 2)
  starts = seqs.offsets[:-1]
  keep = np.zeros(seqs.values.shape[0], bool)
  for u in train_u:
    keep[starts[u]:ends[u]] = True
  train_len = (ends - starts)[train_u]
  train = Sequences(seqs.values[keep],
                    np.concatenate([[0], np.cumsum(train_len)]).astype(np.int64))

  def examples(drop_last: int) -> EvalExamples:
    # Input: all items before the target; target at position n - drop_last.
    lo = starts[long_u]
    hi = seqs.offsets[1:][long_u] - drop_last  # exclusive end of the input
    mask = np.zeros(seqs.values.shape[0], bool)
    for a, b in zip(lo, hi):
      mask[a:b] = True
    inputs = Sequences(seqs.values[mask],
                       np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64))
    return EvalExamples(long_u.astype(np.int64), inputs,
                        seqs.values[hi].astype(np.int32))

  return LeaveOneOutSplit(
      train=train, train_users=train_u.astype(np.int64),
      validation=examples(2), test=examples(1), num_items=log.num_items,
      num_users=log.num_users, num_short_users=int(short.sum()),
      short_users=short_users, item_counts=log.item_counts())


def popularity_negatives(item_counts: np.ndarray, examples: EvalExamples,
                         num_negatives: int, seed: int) -> np.ndarray:
  """Negatives per example, drawn by item popularity (BERT4Rec's protocol).

  For each example, ``num_negatives`` distinct items that are neither its
  target nor in its input sequence, drawn without replacement with
  probability proportional to ``item_counts`` (items with count 0 are never
  drawn). Deterministic given ``seed``.

  Args:
    item_counts: int ``[C]`` popularity (e.g. :meth:`Interactions.item_counts`).
    examples: the evaluation examples.
    num_negatives: N per example.
    seed: the sample's seed.

  Returns:
    int32 ``[len(examples), N]``.

  Raises:
    ValueError: an example with fewer than N items it could draw.
  """
  counts = np.asarray(item_counts, np.float64)
  cdf = np.cumsum(counts)
  total = cdf[-1]
  rng = np.random.default_rng(seed)
  out = np.empty((len(examples), num_negatives), np.int32)
  positive = counts > 0
  for i in range(len(examples)):
    banned = np.unique(np.append(examples.inputs.sequence(i),
                                 examples.targets[i]))
    available = positive.sum() - positive[banned].sum()
    if available < num_negatives:
      raise ValueError(f"example {i} has {available} items to draw "
                       f"{num_negatives} negatives from")
    picked: list[int] = []
    taken = set(banned.tolist())
    while len(picked) < num_negatives:
      draws = np.searchsorted(cdf, rng.random(2 * num_negatives) * total,
                              side="right")
      for item in draws.tolist():
        if item not in taken:
          taken.add(item)
          picked.append(item)
          if len(picked) == num_negatives:
            break
    out[i] = picked
  return out
