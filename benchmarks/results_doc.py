r"""Writes the result tables of the docs from the benchmarks' JSON.

A table in a markdown file under docs/ is generated when it sits between

  <!-- table: MODULE.FUNCTION benchmarks/results/NAME.json -->
  ...
  <!-- /table -->

where ``benchmarks/MODULE.py`` defines ``FUNCTION(results) -> str`` (the
markdown writer the benchmark itself prints with ``--markdown_from``) and
the JSON is what the benchmark wrote. This script replaces everything
between the two markers with the writer's output, so a table cannot drift
from its JSON; ``--check`` only reports the stale tables (exit status 1),
as tests/test_results_doc.py does.

  python benchmarks/results_doc.py            # rewrite docs/*.md tables
  python benchmarks/results_doc.py --check    # fail on a stale table

Each writer runs in its own interpreter (the benchmarks define absl flags of
the same names at import), one per module, in parallel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
MARKER = re.compile(
    r"(<!-- table: (?P<module>\w+)\.(?P<function>\w+) (?P<json>\S+\.json) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- /table -->)", re.S)

_RUNNER = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import {module} as m
calls = json.loads(sys.stdin.read())
out = []
for function, path in calls:
  with open(path) as f:
    out.append(getattr(m, function)(json.load(f)).rstrip("\\n") + "\\n")
print(json.dumps(out))
"""


def tables(text: str) -> list[tuple[str, str, str]]:
  """``(module, function, json path)`` of every marked table, in order."""
  return [(m["module"], m["function"], m["json"])
          for m in MARKER.finditer(text)]


def render_module(module: str, calls: list[tuple[str, str]]) -> list[str]:
  """Runs ``module.function(json)`` for each call in one fresh interpreter."""
  if not (BENCHMARKS / f"{module}.py").exists():
    raise ValueError(f"no benchmarks/{module}.py for a marked table")
  for _, path in calls:
    if not (REPO / path).exists():
      raise ValueError(f"a table of benchmarks/{module}.py names {path}, "
                       "which does not exist")
  proc = subprocess.run(
      [sys.executable, "-c", _RUNNER.format(benchmarks=str(BENCHMARKS),
                                            module=module)],
      input=json.dumps([(f, str(REPO / p)) for f, p in calls]),
      capture_output=True, text=True, cwd=REPO, check=False)
  if proc.returncode:
    raise RuntimeError(f"benchmarks/{module}.py's writers failed:\n"
                       f"{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def render(texts: dict[str, str]) -> dict[str, str]:
  """Every marked table of ``texts`` (name -> markdown) rewritten."""
  calls: dict[str, list[tuple[str, str]]] = {}
  for text in texts.values():
    for module, function, path in tables(text):
      calls.setdefault(module, [])
      if (function, path) not in calls[module]:
        calls[module].append((function, path))
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {m: pool.submit(render_module, m, c) for m, c in calls.items()}
    outputs = {m: dict(zip(calls[m], f.result())) for m, f in futures.items()}

  def fill(match: re.Match) -> str:
    body = outputs[match["module"]][(match["function"], match["json"])]
    return match.group(1) + body + match["end"]

  return {name: MARKER.sub(fill, text) for name, text in texts.items()}


def docs() -> dict[pathlib.Path, str]:
  return {p: p.read_text() for p in sorted((REPO / "docs").glob("*.md"))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="report stale tables and exit 1; write nothing")
  args = parser.parse_args(argv)
  texts = docs()
  new = render(texts)
  stale = [p for p in texts if new[p] != texts[p]]
  for path in stale:
    rel = path.relative_to(REPO)
    if args.check:
      print(f"{rel}: a generated table differs from its JSON "
            "(python benchmarks/results_doc.py)")
    else:
      path.write_text(new[path])
      print(f"rewrote the tables of {rel}")
  count = sum(len(tables(t)) for t in texts.values())
  print(f"{count} generated tables, {len(stale)} file(s) "
        f"{'stale' if args.check else 'rewritten'}")
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
