"""Bad-input fuzz of every reader, LabelCodec and product_topk, as a table.

Runs the hypothesis generators of ``benchmarks/fuzz_cases.py`` (the same ones
``tests/test_fuzz.py`` runs, bounded) for ``--cases`` cases per target and
classifies each against the plain-Python reference parsers: parsed equal to
the reference, refused with the documented error naming the file and line
(or the argument), or one of the failures (a wrong result, bad input
accepted, good input refused, an error without the right file / line /
argument, any other exception). Prints a table per target with the refusals
counted by error class and first word of the message, and writes
``benchmarks/results/fuzz_readers.json`` (the failing cases included, at most
``--keep_failures`` per target).

  python benchmarks/fuzz_readers.py                  # 2000 cases per target
  python benchmarks/fuzz_readers.py --cases=200 --targets=xc,arff --seed=1

Targets: xc (formats.read_xc), xc_stream (streaming.iter_xc_batches), arff
(formats.read_arff), text (corpus.Corpus.from_file), pairs and sequences
(interactions.read_interactions), names (formats.read_names), codec
(LabelCodec and its encode/decode), topk (ops.product_topk).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from hypothesis import HealthCheck  # pylint: disable=g-import-not-at-top,wrong-import-position
from hypothesis import Phase  # pylint: disable=g-import-not-at-top,wrong-import-position
from hypothesis import given  # pylint: disable=g-import-not-at-top,wrong-import-position
from hypothesis import seed as hypothesis_seed  # pylint: disable=g-import-not-at-top,wrong-import-position
from hypothesis import settings  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fuzz_cases  # pylint: disable=g-import-not-at-top,wrong-import-position

_CASES = flags.DEFINE_integer("cases", 2000, "Cases per target.")
_TARGETS = flags.DEFINE_list("targets", list(fuzz_cases.TARGETS),
                             "Targets to run.")
_SEED = flags.DEFINE_integer("seed", 0, "Hypothesis seed.")
_KEEP = flags.DEFINE_integer("keep_failures", 20,
                             "Failing cases kept in the JSON per target.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "fuzz_readers.json"),
    "Where to write the JSON results.")


def run_target(name: str, cases: int, seed: int, tmp: pathlib.Path) -> dict:
  """Runs ``cases`` generated cases of one target; counts and failures."""
  strategy, check = fuzz_cases.TARGETS[name]
  statuses, kinds = collections.Counter(), collections.Counter()
  failures = []

  @hypothesis_seed(seed)
  @settings(max_examples=cases, deadline=None, database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck))
  @given(strategy())
  def run(case):
    out = check(case, tmp)
    statuses[out.status] += 1
    if out.status == "refused":
      kinds[out.kind] += 1
    elif out.status != "equal" and len(failures) < _KEEP.value:
      failures.append({"status": out.status, "detail": out.detail[:2000],
                       "case": repr(case)[:2000]})

  start = time.perf_counter()
  run()
  return {"cases": sum(statuses.values()),
          "statuses": {s: statuses[s] for s in fuzz_cases.STATUSES},
          "refusal_kinds": dict(kinds.most_common()),
          "failures": failures,
          "seconds": round(time.perf_counter() - start, 2)}


def _table(results: dict) -> str:
  head = ("| target | cases | parsed = reference | refused (named) | "
          "wrong | accepted bad | refused good | unnamed error | crash | s |")
  rows = [head, "|" + "---|" * 10]
  for name, r in results.items():
    s = r["statuses"]
    rows.append(
        f"| {name} | {r['cases']} | {s['equal']} | {s['refused']} | "
        f"{s['wrong']} | {s['accepted_bad']} | {s['refused_good']} | "
        f"{s['bad_error']} | {s['crash']} | {r['seconds']:.0f} |")
  lines = ["\n".join(rows), "", "Refusals by error kind (top 6 per target):"]
  for name, r in results.items():
    kinds = list(r["refusal_kinds"].items())[:6]
    lines.append(f"  {name}: " + ", ".join(f"{k} {n}" for k, n in kinds))
  return "\n".join(lines)


def main(argv):
  del argv
  unknown = sorted(set(_TARGETS.value) - set(fuzz_cases.TARGETS))
  if unknown:
    raise app.UsageError(f"unknown targets {unknown}; known: "
                         f"{sorted(fuzz_cases.TARGETS)}")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in _TARGETS.value:
      results[name] = run_target(name, _CASES.value, _SEED.value,
                                 pathlib.Path(tmp))
      s = results[name]["statuses"]
      print(f"{name}: {results[name]['cases']} cases, {s['equal']} equal, "
            f"{s['refused']} refused, "
            f"{sum(s[f] for f in fuzz_cases.FAILURES)} failures "
            f"({results[name]['seconds']:.0f} s)", flush=True)
  table = _table(results)
  print(table)
  failures = sum(r["statuses"][f] for r in results.values()
                 for f in fuzz_cases.FAILURES)
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "command": "python benchmarks/fuzz_readers.py " + " ".join(
          f"--{k}={v}" for k, v in (("cases", _CASES.value),
                                    ("seed", _SEED.value))),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                 f"Python {platform.python_version()}",
      "date": time.strftime("%Y-%m-%d"),
      "failures": failures,
      "targets": results,
      "table": table,
  }, indent=1) + "\n")
  print(f"wrote {out}")
  if failures:
    raise SystemExit(f"{failures} failing cases (see {out})")


if __name__ == "__main__":
  app.run(main)
