"""Word-level next-token prediction from a plain text corpus.

A large-vocabulary single-label task: given the ``n`` previous tokens, predict
the next one; every vocabulary entry is a class.

Tokenisation (:func:`tokenize`): the text is lower-cased, then split by the
regular expression :data:`TOKEN_PATTERN` into

* words: runs of letters (any script) and of numeric characters that are not
  decimal digits (``²``, ``½``, ``Ⅻ``: Python's ``\\w`` less digits and
  ``_``), with internal apostrophes kept (``don't``, ``o'er``, ``i'the`` are
  one token each);
* numbers: runs of decimal digits;
* every other non-whitespace character on its own (``,`` ``.`` ``:`` ``?``
  ``'`` ``-`` ...), so ``'tis`` is ``'`` + ``tis`` and ``rogues'`` is
  ``rogues`` + ``'``.

Whitespace, newlines included, only separates tokens.

Vocabulary: counted on the training part of the stream only (test words never
seen in training become ``<unk>``). Id 0 is ``<unk>``, which also stands for
every training type seen fewer than ``min_count`` times; ids 1.. are the kept
types by decreasing training count, ties in code-point order. There is no
padding token: an example is only made where all ``n`` context tokens exist.
``<unk>`` is a class like any other (targets may be 0).

Split: the last ``floor(test_fraction * T)`` tokens of the stream of T tokens
are the test part, the rest the training part. Examples never cross the
boundary: a training example's context and target all lie in the training
part, a test example's context and target all lie in the test part, so no
token position is shared between a training and a test example. The price is
that the first ``n`` tokens of each part are never targets.

Vocabulary sizes on tiny-shakespeare (``input.txt``, 1.1 MB, 253,593 tokens,
``test_fraction=0.1``), ``num_classes`` including ``<unk>``:

=========  ===========
min_count  num_classes
=========  ===========
1          11,697
2          6,419
3          4,633
=========  ===========

(On the whole stream there are 12,384 / 6,863 / 4,993 types.)

Example::

  from mhe_jax.data import corpus

  c = corpus.Corpus.from_file("tinyshakespeare/input.txt", min_count=2)
  x, y = c.examples("train", context=8)  # int32 [N, 8], int32 [N]
  c.num_classes                          # 6419
  c.decode(x[0])                         # ['first', 'citizen', ':', ...]
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

from mhe_jax.data import formats

#: Token regex, applied to lower-cased text (see the module docstring).
TOKEN_PATTERN = r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|\S"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

UNK = "<unk>"
UNK_ID = 0
SPLITS = ("train", "test")


def tokenize(text: str) -> list[str]:
  """Lower-cases ``text`` and splits it into word, number and symbol tokens.

  Args:
    text: any text.

  Returns:
    The tokens, in order.
  """
  return _TOKEN_RE.findall(text.lower())


def _types_and_inverse(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Distinct tokens (sorted) and, per token, the index of its type."""
  # An object array: numpy's fixed-width str_ drops trailing NULs ("\x00"
  # would become "").
  uniq, inverse = np.unique(np.array(tokens, dtype=object),
                            return_inverse=True)
  return uniq, inverse.reshape(-1)


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """A tokenised corpus with a vocabulary and a positional train/test split.

  Build with :meth:`from_file` or :meth:`from_text`.

  Attributes:
    vocab: id -> token; ``vocab[0] == "<unk>"``.
    counts: int64 ``[V]`` training-part count of each id (``counts[0]``: the
      training tokens mapped to ``<unk>``).
    ids: int32 ``[T]`` the whole token stream as ids.
    boundary: index of the first test token; ``ids[:boundary]`` is the
      training part, ``ids[boundary:]`` the test part.
    min_count: the minimum training count for a type to get its own id.
  """

  vocab: tuple[str, ...]
  counts: np.ndarray
  ids: np.ndarray
  boundary: int
  min_count: int
  token_to_id: dict[str, int] = dataclasses.field(repr=False)

  @classmethod
  def from_text(
      cls, text: str, *, min_count: int = 1, test_fraction: float = 0.1
  ) -> Corpus:
    """Tokenises ``text``, splits the stream and builds the vocabulary.

    Args:
      text: the corpus.
      min_count: training types seen fewer times map to ``<unk>``; >= 1.
      test_fraction: fraction of the stream (at its end) held out, in [0, 1).

    Returns:
      The corpus.

    Raises:
      ValueError: for an empty (or all-whitespace) text or bad arguments.
    """
    if min_count < 1:
      raise ValueError(f"min_count must be >= 1, got {min_count}")
    if not 0 <= test_fraction < 1:
      raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    tokens = tokenize(text)
    if not tokens:
      raise ValueError("the text holds no tokens")
    num_tokens = len(tokens)
    boundary = num_tokens - int(num_tokens * test_fraction)
    types, inverse = _types_and_inverse(tokens)
    train_counts = np.bincount(inverse[:boundary], minlength=types.size)
    kept = np.flatnonzero(train_counts >= min_count)
    # Decreasing count; a stable sort keeps code-point order among ties.
    kept = kept[np.argsort(-train_counts[kept], kind="stable")]
    id_of_type = np.full(types.size, UNK_ID, np.int32)
    id_of_type[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    vocab = (UNK,) + tuple(types[kept].tolist())
    counts = np.concatenate([
        [train_counts.sum() - train_counts[kept].sum()], train_counts[kept]
    ]).astype(np.int64)
    return cls(
        vocab=vocab,
        counts=counts,
        ids=id_of_type[inverse],
        boundary=int(boundary),
        min_count=min_count,
        token_to_id={t: i for i, t in enumerate(vocab)},
    )

  @classmethod
  def from_file(
      cls,
      path: str | os.PathLike,
      *,
      min_count: int = 1,
      test_fraction: float = 0.1,
      encoding: str = "utf-8",
  ) -> Corpus:
    """Reads a plain text file; see :meth:`from_text`.

    A leading byte order mark is dropped.

    Raises:
      FormatError: (a ValueError) for bytes that are not valid in
        ``encoding``, naming the file and the line.
      ValueError: for an empty file (naming it) or bad arguments.
    """
    text = formats.read_text(path, encoding)
    if not text.strip():
      raise ValueError(f"{os.fspath(path)}: empty corpus file")
    return cls.from_text(text, min_count=min_count, test_fraction=test_fraction)

  @property
  def num_classes(self) -> int:
    """Vocabulary size, ``<unk>`` included: the number of target classes."""
    return len(self.vocab)

  def split_ids(self, split: str) -> np.ndarray:
    """The int32 ``[T_split]`` token ids of ``"train"`` or ``"test"``."""
    if split == "train":
      return self.ids[:self.boundary]
    if split == "test":
      return self.ids[self.boundary:]
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

  def examples(
      self, split: str, context: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """All (previous ``context`` tokens -> next token) pairs of a split.

    Example ``i`` is ``contexts[i] = s[i:i + context]``,
    ``targets[i] = s[i + context]`` for the split's stream ``s``; both lie
    entirely inside the split (see the module docstring).

    Args:
      split: ``"train"`` or ``"test"``.
      context: number of previous tokens, >= 1.

    Returns:
      ``(contexts, targets)``: int32 ``[N, context]`` and int32 ``[N]`` with
      ``N = max(0, len(s) - context)``.
    """
    if context < 1:
      raise ValueError(f"context must be >= 1, got {context}")
    s = self.split_ids(split)
    if s.size <= context:
      return (np.zeros((0, context), np.int32), np.zeros((0,), np.int32))
    windows = np.lib.stride_tricks.sliding_window_view(s, context + 1)
    return (np.ascontiguousarray(windows[:, :context]),
            np.ascontiguousarray(windows[:, context]))

  def encode(self, text: str) -> np.ndarray:
    """Tokenises ``text`` into int32 ``[T]`` ids (unknown tokens -> 0)."""
    tokens = tokenize(text)
    if not tokens:
      return np.zeros((0,), np.int32)
    types, inverse = _types_and_inverse(tokens)
    id_of_type = np.array(
        [self.token_to_id.get(t, UNK_ID) for t in types.tolist()], np.int32)
    return id_of_type[inverse]

  def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
    """Token strings of ``ids``."""
    return [self.vocab[i] for i in np.asarray(ids).reshape(-1).tolist()]
