"""Bad input, systematically: every reader, LabelCodec and product_topk.

Each hypothesis case (generators and plain-Python reference parsers in
benchmarks/fuzz_cases.py) must either parse to exactly the reference's
result or raise the reader's documented error naming the file and the line
(or the argument) the reference points at. The runs are derandomized, so CI
sees the same cases every time; ``MHE_FUZZ_EXAMPLES=2000 pytest
tests/test_fuzz.py`` runs more (and random) cases locally.
"""

import collections
import importlib.util
import math
import os
import pathlib
import sys

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
import numpy as np
import pytest

from mhe_jax import streaming  # pylint: disable=unused-import
from mhe_jax.data import corpus
from mhe_jax.data import formats
from mhe_jax.data import interactions
from mhe_jax.ops import topk
from mhe_jax.ops.codec import LabelCodec

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_cases.py"
_spec = importlib.util.spec_from_file_location("fuzz_cases", _PATH)
fuzz_cases = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_cases"] = fuzz_cases
_spec.loader.exec_module(fuzz_cases)

_LONG = int(os.environ.get("MHE_FUZZ_EXAMPLES", "0"))
# Examples per target in CI, sized so the file runs in well under a minute
# on 2 CPU cores (product_topk compiles per shape, so it gets fewer).
_EXAMPLES = {"topk": 40, "codec": 120}
_DEFAULT_EXAMPLES = 250


def _settings(target: str) -> settings:
  return settings(
      max_examples=_LONG or _EXAMPLES.get(target, _DEFAULT_EXAMPLES),
      deadline=None, derandomize=not _LONG, database=None,
      suppress_health_check=[HealthCheck.too_slow,
                             HealthCheck.filter_too_much,
                             HealthCheck.data_too_large])


@pytest.mark.parametrize("target", list(fuzz_cases.TARGETS))
def test_fuzz_matches_reference_or_refuses(target, tmp_path):
  strategy, check = fuzz_cases.TARGETS[target]
  seen = collections.Counter()

  @_settings(target)
  @given(strategy())
  def run(case):
    out = check(case, tmp_path)
    seen[out.status] += 1
    assert out.status in ("equal", "refused"), (
        f"{out.status} ({out.kind}): {out.detail}\ncase: {case}")

  run()
  # Both paths must be exercised, or the comparison proves nothing.
  assert seen["equal"] >= 5 and seen["refused"] >= 5, dict(seen)


# ---------------------------------------------------------------------------
# The references and the judge themselves.

def test_reference_xc_reads_the_documented_format():
  raw = b"3 4 5\r\n4,1 3:0.5 0:-2\n 2:1e-3\n\n"
  shape_x, shape_y, x_rows, y_rows, _ = fuzz_cases.reference_xc(raw)
  assert (shape_x, shape_y) == ((3, 4), (3, 5))
  assert y_rows == [[1, 4], [], []]
  assert x_rows == [[(0, -2.0), (3, 0.5)], [(2, float(np.float32(1e-3)))], []]
  for bad, line in ((b"2 4 5\n0 1:1\n", 3), (b"1 4 5\n0 4:1\n", 2),
                    (b"1 4 5\n0 1:nan\n", 2), (b"1 4 5\n0,0\n", 2),
                    (b"1 4 5\n0 1:1\n\n", 3), (b"1 4\n", 1),
                    (b"1 4 5\r0 1:1e39\r", 2), (b"1 4 5\r\xff\n", 2)):
    with pytest.raises(fuzz_cases.Refuse) as e:
      fuzz_cases.reference_xc(bad)
    assert e.value.line == line, bad


def test_reference_tokens_follow_the_docstring():
  assert fuzz_cases.reference_tokens("'Tis o'er, DON'T 42x\u00b2") == [
      "'", "tis", "o'er", ",", "don't", "42", "x\u00b2"]
  assert fuzz_cases.reference_tokens("a''b 1_2 \u0661\u0662") == [
      "a", "'", "'", "b", "1", "_", "2", "\u0661\u0662"]


def test_judge_flags_wrong_results_and_unnamed_errors(tmp_path):
  case = fuzz_cases.Case({"data": b"1 3 2\n1 2:1\n"}, {})
  paths = fuzz_cases.write_files(case, tmp_path, {"data": "f.txt"})
  ref = lambda: fuzz_cases.reference_xc(case.files["data"])  # noqa: E731

  def off_by_one():
    data = formats.read_xc(paths["data"])
    data.X.data[:] += 1
    return data

  def bare():
    raise formats.FormatError("elsewhere.txt", 2, "boom")

  judge = fuzz_cases.judge
  errors = (formats.FormatError,)
  assert judge(lambda: formats.read_xc(paths["data"]), ref,
               fuzz_cases.same_xmc, paths, errors).status == "equal"
  assert judge(off_by_one, ref, fuzz_cases.same_xmc, paths,
               errors).status == "wrong"
  assert judge(bare, ref, fuzz_cases.same_xmc, paths,
               errors).status == "refused_good"
  assert judge(lambda: [][1], ref, fuzz_cases.same_xmc, paths,
               errors).status == "crash"
  bad_ref = lambda: fuzz_cases.reference_xc(b"1 3 2\n9\n")  # noqa: E731
  assert judge(bare, bad_ref, fuzz_cases.same_xmc, paths,
               errors).status == "bad_error"
  assert judge(lambda: None, bad_ref, fuzz_cases.same_xmc, paths,
               errors).status == "accepted_bad"
