"""benchmarks/results_doc.py: the docs' generated tables equal their JSON."""

import importlib.util
import json

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def doc():
  spec = importlib.util.spec_from_file_location(
      "results_doc_under_test", REPO_ROOT / "benchmarks" / "results_doc.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_generated_table_is_current(doc, capsys):
  texts = doc.docs()
  assert sum(len(doc.tables(t)) for t in texts.values()) >= 2
  assert doc.main(["--check"]) == 0, capsys.readouterr().out


def test_a_stale_table_is_rewritten_from_its_json(doc, tmp_path):
  marker = ("<!-- table: shakespeare.markdown_table "
            "benchmarks/results/shakespeare.json -->\n")
  text = f"before\n\n{marker}| stale | 0 |\n<!-- /table -->\n\nafter\n"
  out = doc.render({"x": text})["x"]
  assert out.startswith(f"before\n\n{marker}| head | acc@1 |")
  assert out.endswith("<!-- /table -->\n\nafter\n")
  assert "stale" not in out
  rows = json.loads((REPO_ROOT / "benchmarks" / "results" /
                     "shakespeare.json").read_text())["rows"]
  body = out[len("before\n\n") + len(marker):]
  # One table row per setting, each with its head parameters as in the JSON.
  for setting in {r["setting"] for r in rows}:
    params = next(r["head_params"] for r in rows if r["setting"] == setting)
    line = next(l for l in body.splitlines()
                if l.startswith(f"| {setting.replace('_', ' ')} |")
                or l.startswith(f"| {setting} |"))
    assert f"{params:,}" in line
  with pytest.raises(ValueError, match="nothing.json, which does not exist"):
    doc.render({"y": marker.replace("shakespeare.json", "nothing.json")
                + "<!-- /table -->\n"})
