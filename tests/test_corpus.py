"""Tests for mhe_jax.data.corpus: tokenisation, vocabulary, examples, split."""

import collections

import numpy as np
import pytest

from mhe_jax.data import corpus
from mhe_jax.data.corpus import Corpus

TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak. 'Tis 2 o'er-much; don't the rogues' 1603 ÉTÉ été!
"""


def test_tokenize_hand_written():
  assert corpus.tokenize(TEXT) == [
      "first", "citizen", ":",
      "before", "we", "proceed", "any", "further", ",", "hear", "me",
      "speak", ".",
      "all", ":",
      "speak", ",", "speak", ".", "'", "tis", "2", "o'er", "-", "much", ";",
      "don't", "the", "rogues", "'", "1603", "été", "été", "!"]
  assert corpus.tokenize("a_b  x--y\t42nd") == [
      "a", "_", "b", "x", "-", "-", "y", "42", "nd"]
  assert corpus.tokenize(" \n ") == []


def _naive_examples(stream, n):
  return ([stream[i:i + n] for i in range(len(stream) - n)],
          [stream[i + n] for i in range(len(stream) - n)])


@pytest.mark.parametrize("min_count", [1, 2, 3])
def test_vocabulary_counts_match_counter(min_count):
  text = TEXT * 3 + "speak speak rare words once"
  c = Corpus.from_text(text, min_count=min_count, test_fraction=0.25)
  tokens = corpus.tokenize(text)
  boundary = len(tokens) - int(len(tokens) * 0.25)
  assert c.boundary == boundary
  train = collections.Counter(tokens[:boundary])
  kept = {t: n for t, n in train.items() if n >= min_count}
  assert c.vocab[0] == corpus.UNK
  assert set(c.vocab[1:]) == set(kept)
  assert c.num_classes == len(kept) + 1
  for i, tok in enumerate(c.vocab[1:], start=1):
    assert c.counts[i] == kept[tok]
    assert c.token_to_id[tok] == i
  assert c.counts[0] == sum(n for n in train.values() if n < min_count)
  # Ordered by decreasing count, ties in code-point order.
  expected = sorted(kept, key=lambda t: (-kept[t], t))
  assert list(c.vocab[1:]) == expected
  # The stream: every token's id, rare and test-only tokens as <unk>.
  assert c.ids.dtype == np.int32
  assert c.ids.tolist() == [c.token_to_id.get(t, 0) if t in kept else 0
                            for t in tokens]
  assert c.decode(c.encode("speak, zyzzyva")) == ["speak", ",", "<unk>"]


@pytest.mark.parametrize("context", [1, 2, 5])
def test_examples_equal_sliding_window(context):
  c = Corpus.from_text(TEXT * 2, test_fraction=0.3)
  ids = c.ids.tolist()
  for split, stream in (("train", ids[:c.boundary]),
                        ("test", ids[c.boundary:])):
    x, y = c.examples(split, context)
    want_x, want_y = _naive_examples(stream, context)
    assert x.dtype == y.dtype == np.int32
    assert x.shape == (len(want_y), context) and y.shape == (len(want_y),)
    assert x.tolist() == want_x
    assert y.tolist() == want_y


def test_split_has_no_overlap():
  c = Corpus.from_text(TEXT * 4, test_fraction=0.25)
  n = 3
  num_tokens = len(c.ids)
  # Recover each example's stream positions by sliding a window of
  # positions exactly as examples() slides one of ids.
  positions = np.arange(num_tokens)
  train_x, train_y = c.examples("train", n)
  test_x, test_y = c.examples("test", n)
  train_pos = np.lib.stride_tricks.sliding_window_view(
      positions[:c.boundary], n + 1)
  test_pos = np.lib.stride_tricks.sliding_window_view(
      positions[c.boundary:], n + 1)
  np.testing.assert_array_equal(c.ids[train_pos[:, :n]], train_x)
  np.testing.assert_array_equal(c.ids[train_pos[:, n]], train_y)
  np.testing.assert_array_equal(c.ids[test_pos[:, :n]], test_x)
  np.testing.assert_array_equal(c.ids[test_pos[:, n]], test_y)
  assert train_pos.max() < c.boundary <= test_pos.min()
  assert len(train_y) + len(test_y) == num_tokens - 2 * n
  assert 0 < len(test_y) and num_tokens - c.boundary == int(num_tokens * 0.25)


def test_no_test_split_and_short_streams():
  c = Corpus.from_text("a b c", test_fraction=0.0)
  assert c.boundary == 3
  x, y = c.examples("test", 1)
  assert x.shape == (0, 1) and y.shape == (0,)
  x, y = c.examples("train", 3)
  assert x.shape == (0, 3) and y.shape == (0,)
  x, y = c.examples("train", 2)
  assert c.decode(x[0]) == ["a", "b"] and c.decode(y) == ["c"]


def test_errors(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.txt: empty corpus file"):
    Corpus.from_file(empty)
  blank = tmp_path / "blank.txt"
  blank.write_text(" \n\t\n")
  with pytest.raises(ValueError, match="empty corpus file"):
    Corpus.from_file(blank)
  with pytest.raises(ValueError, match="no tokens"):
    Corpus.from_text("")
  c = Corpus.from_text(TEXT)
  with pytest.raises(ValueError, match="context must be >= 1"):
    c.examples("train", 0)
  with pytest.raises(ValueError, match="unknown split"):
    c.examples("valid", 2)
  with pytest.raises(ValueError, match="min_count"):
    Corpus.from_text(TEXT, min_count=0)
  with pytest.raises(ValueError, match="test_fraction"):
    Corpus.from_text(TEXT, test_fraction=1.0)


def test_tiny_shakespeare(shared_data):
  c = Corpus.from_file(shared_data / "tinyshakespeare" / "input.txt",
                       min_count=2)
  # The sizes quoted in the module docstring.
  assert len(c.ids) == 253_593
  assert c.num_classes == 6_419
  assert c.vocab[:5] == ("<unk>", ",", ":", ".", "the")
  x, y = c.examples("train", 4)
  assert x.shape == (c.boundary - 4, 4)
  assert c.decode(x[0]) == ["first", "citizen", ":", "before"]
  assert c.decode(y[:1]) == ["we"]
  assert int(c.counts.sum()) == c.boundary


def test_from_file_bom_undecodable_bytes_and_nul_tokens(tmp_path):
  # Found by tests/test_fuzz.py: a byte order mark became a token, an
  # undecodable byte a bare UnicodeDecodeError without the file, and the
  # token "\x00" the vocabulary entry "" (numpy's str_ drops trailing NULs).
  path = tmp_path / "c.txt"
  path.write_bytes(b"\xef\xbb\xbfhello world hello")
  assert Corpus.from_file(path, test_fraction=0).vocab == (
      "<unk>", "hello", "world")
  path.write_bytes(b"a b\rc\r\xff d\r")
  with pytest.raises(ValueError, match=r"c.txt, line 3: not valid utf-8"):
    Corpus.from_file(path)
  path.write_bytes(b"\x00 a \x00")
  c = Corpus.from_file(path, test_fraction=0)
  assert c.vocab == ("<unk>", "\x00", "a") and c.ids.tolist() == [1, 2, 1]
  assert c.decode(c.encode("a \x00")) == ["a", "\x00"]


def test_tokenize_numeric_non_digits_are_word_characters():
  # The documented word class: letters and numeric characters that are not
  # decimal digits (Python's \w less digits and '_').
  assert corpus.tokenize("x\u00b2 \u00bd \u216b 12\u0661 a_b") == [
      "x\u00b2", "\u00bd", "\u217b", "12\u0661", "a", "_", "b"]  # lower-cased
