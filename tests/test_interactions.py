"""Interaction logs: both layouts, id maps, leave-one-out, strict errors."""

import random

import numpy as np
import pytest

from mhe_jax.data import interactions
from mhe_jax.data.formats import FormatError


def write(tmp_path, text, name="log.txt"):
  path = tmp_path / name
  path.write_text(text)
  return path


def reference_read(lines, item_order="sorted"):
  """Plain-Python reader of '<user> <item> [ts]' pair lines (no checks)."""
  users, seqs = [], {}
  for line in lines:
    f = [int(x) for x in line.split()]
    if f[0] not in seqs:
      users.append(f[0])
      seqs[f[0]] = []
    seqs[f[0]].append((f[2] if len(f) == 3 else 0, len(seqs[f[0]]), f[1]))
  ordered = [[it for _, _, it in sorted(seqs[u])] for u in users]
  if item_order == "sorted":
    items = sorted({i for s in ordered for i in s})
  else:
    items = []
    for s in ordered:
      for i in s:
        if i not in items:
          items.append(i)
  index = {o: d for d, o in enumerate(items)}
  return users, items, [[index[i] for i in s] for s in ordered]


def reference_split(seqs, short_users="train"):
  train, val, test, short = [], [], [], 0
  for u, s in enumerate(seqs):
    if len(s) < 3:
      short += 1
      if short_users == "train":
        train.append((u, s))
      continue
    train.append((u, s[:-2]))
    val.append((u, s[:-2], s[-2]))
    test.append((u, s[:-1], s[-1]))
  return train, val, test, short


def test_pairs_layout_ids_and_leave_one_out(tmp_path):
  # Users 7, 3, 9: 4, 3 and 2 items (user 9 is short).
  path = write(tmp_path, "7 30\n7 10\n7 20\n7 50\n3 20\n3 40\n3 10\n9 60\n9 30\n")
  log = interactions.read_interactions(path)
  assert log.user_ids.tolist() == [7, 3, 9]
  assert log.item_ids.tolist() == [10, 20, 30, 40, 50, 60]
  assert log.item_index()[40] == 3 and log.user_index()[9] == 2
  assert log.sequences.to_lists() == [[2, 0, 1, 4], [1, 3, 0], [5, 2]]
  split = interactions.leave_one_out(log)
  assert split.train.to_lists() == [[2, 0], [1], [5, 2]]
  assert split.validation.inputs.to_lists() == [[2, 0], [1]]
  assert split.validation.targets.tolist() == [1, 3]
  assert split.test.inputs.to_lists() == [[2, 0, 1], [1, 3]]  # + val item
  assert split.test.targets.tolist() == [4, 0]
  assert split.test.users.tolist() == [0, 1]
  assert split.item_counts.tolist() == [2, 2, 2, 1, 1, 1]
  s = split.summary()
  assert (s["num_short_users"], s["num_train_users"], s["num_eval_users"]) == (1, 3, 2)
  dropped = interactions.leave_one_out(log, short_users="drop")
  assert dropped.train.to_lists() == [[2, 0], [1]]
  assert dropped.train_users.tolist() == [0, 1]
  assert dropped.num_short_users == 1


def test_first_seen_order_and_timestamps_stable(tmp_path):
  # Timestamps reorder user 1: (ts 5: 8), (ts 2: 4), (ts 2: 6) -> 4, 6, 8.
  path = write(tmp_path, "1 8 5\n1 4 2\n1 6 2\n2 9 1\n2 4 0\n")
  log = interactions.read_interactions(path, item_order="first_seen")
  assert log.item_ids.tolist() == [4, 6, 8, 9]
  assert log.sequences.to_lists() == [[0, 1, 2], [0, 3]]


def test_sequence_layout_equals_pairs(tmp_path):
  seq = write(tmp_path, "5 3 1 2\n2 7 3\n", "seq.txt")
  pairs = write(tmp_path, "5 3\n5 1\n5 2\n2 7\n2 3\n", "pairs.txt")
  a = interactions.read_interactions(seq)
  b = interactions.read_interactions(pairs)
  assert a.sequences.to_lists() == b.sequences.to_lists() == [[2, 0, 1], [3, 2]]
  assert a.user_ids.tolist() == [5, 2]
  # 3-column sequence lines need the layout spelled out.
  three = write(tmp_path, "5 3 1\n2 7 3\n", "three.txt")
  log = interactions.read_interactions(three, layout="sequences")
  assert log.sequences.to_lists() == [[1, 0], [2, 1]]


def test_random_logs_match_plain_python_reference(tmp_path):
  rng = random.Random(0)
  for trial in range(5):
    lines = []
    with_ts = trial % 2 == 1
    for user in rng.sample(range(1, 1000), 30):
      prev = None
      for _ in range(rng.randint(1, 8)):
        item = rng.choice([i for i in range(1, 40) if i != prev])
        prev = item
        lines.append(f"{user} {item}" + (f" {rng.randint(0, 5)}" if with_ts else ""))
    path = write(tmp_path, "\n".join(lines) + "\n")
    for order in ("sorted", "first_seen"):
      if with_ts and order == "first_seen":
        continue  # the reference sorts before assigning; both do the same
      log = interactions.read_interactions(path, item_order=order,
                                           repeats="keep")
      users, items, seqs = reference_read(lines, order)
      assert log.user_ids.tolist() == users
      assert log.item_ids.tolist() == items
      assert log.sequences.to_lists() == seqs
      for policy in ("train", "drop"):
        split = interactions.leave_one_out(log, short_users=policy)
        train, val, test, short = reference_split(seqs, policy)
        assert split.train.to_lists() == [s for _, s in train]
        assert split.train_users.tolist() == [u for u, _ in train]
        assert split.validation.inputs.to_lists() == [s for _, s, _ in val]
        assert split.validation.targets.tolist() == [t for _, _, t in val]
        assert split.test.inputs.to_lists() == [s for _, s, _ in test]
        assert split.test.targets.tolist() == [t for _, _, t in test]
        assert split.num_short_users == short


def test_consecutive_repeats(tmp_path):
  path = write(tmp_path, "1 4\n1 4\n1 5\n1 4\n")
  with pytest.raises(FormatError, match=r"log.txt, line 2: user 1 has item 4 "
                     r"twice in a row \(previous on line 1\)"):
    interactions.read_interactions(path)
  kept = interactions.read_interactions(path, repeats="keep")
  assert kept.sequences.to_lists() == [[0, 0, 1, 0]]
  dropped = interactions.read_interactions(path, repeats="drop")
  assert dropped.sequences.to_lists() == [[0, 1, 0]]  # later repeat kept
  assert dropped.repeats_dropped == 1


@pytest.mark.parametrize("text,kwargs,match", [
    ("", {}, r"log.txt, line 1: empty file"),
    ("1 2\n1 x\n", {}, r"log.txt, line 2: 'x' is not a non-negative integer"),
    ("1 2\n1 -3\n", {}, r"line 2: '-3' is not a non-negative integer"),
    ("1 2.5\n", {}, r"line 1: '2.5' is not"),
    ("1 2\n1 3\n1 4 5\n", {"layout": "pairs"}, r"line 3: 3 columns, expected 2"),
    ("1 2 3 4\n", {"layout": "pairs"}, r"line 1: 4 columns; the pairs layout"),
    ("1 2\n2 3\n1 4\n", {}, r"line 3: user 1 again after other users \(first "
     r"on line 1\)"),
    ("1 2 3\n1 4 5 6\n", {}, r"line 2: user 1 on a second line \(first on line 1\)"),
    ("1 2 3\n4\n", {}, r"line 2: a sequence line needs a user and at least one"),
    ("1 2\n\n1 3\n", {}, r"line 2: blank line"),
])
def test_format_errors_name_file_and_line(tmp_path, text, kwargs, match):
  path = write(tmp_path, text)
  with pytest.raises(FormatError, match=match) as e:
    interactions.read_interactions(path, **kwargs)
  assert e.value.path == str(path)


def test_bad_arguments():
  with pytest.raises(ValueError, match="layout must be"):
    interactions.read_interactions("x", layout="csv")
  with pytest.raises(ValueError, match="short_users must be"):
    interactions.leave_one_out(None, short_users="keep")


def test_amazon_beauty_counts(shared_data):
  log = interactions.read_interactions(
      shared_data / "amazon_beauty" / "interactions.txt")
  assert (log.num_users, log.num_items, log.num_interactions) == (
      40226, 54542, 353962)
  assert log.item_ids.tolist() == list(range(1, 54543))  # 1-based -> 0-based
  split = interactions.leave_one_out(log)
  assert len(split.test) == len(split.validation) == 40226
  assert split.num_short_users == 0
  assert split.train.values.shape[0] == 353962 - 2 * 40226
  first = log.sequences.sequence(0)
  assert split.test.targets[0] == first[-1]
  assert split.validation.targets[0] == first[-2]


def test_int64_ids_and_nanosecond_timestamps(tmp_path):
  # Found by tests/test_fuzz.py: ids of 19 digits (nanosecond Unix times
  # among them) were refused as "not a non-negative integer id".
  path = write(tmp_path, "5 9223372036854775807 1700000000000000001\n"
               "5 1000000000000000000 1700000000000000000\n")
  log = interactions.read_interactions(path)
  assert log.item_ids.tolist() == [10**18, 2**63 - 1]
  assert log.sequences.to_lists() == [[0, 1]]
  path = write(tmp_path, "5 9223372036854775808\n")
  with pytest.raises(FormatError, match=r"line 1: id 9223372036854775808 "
                     r"does not fit in int64"):
    interactions.read_interactions(path)
