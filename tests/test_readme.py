"""The README and docs/ run as written and stay a front door plus reference.

Every ```python block of README.md and docs/*.md is executed, the blocks of
one page in order in one namespace (like a notebook). Paths are redirected:
``"../shared/data/..."`` to the real-data directory, and a string
``"/tmp/NAME..."`` to a temporary directory; when NAME is a config's name
(``configs/NAME.py``, or ``DATASET_HEAD`` for ``configs/DATASET.py:head=HEAD``,
as ``--workdir=/tmp/delicious_mhc`` beside ``--config=configs/delicious.py:
head=mhc``), ``/tmp/NAME`` is that config's workdir, trained with its
``runlocal`` argument (seconds) before the page runs, so the load-and-predict
examples run against a real workdir.
"""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from mhe_jax import config_lib
from mhe_jax import train

PAGES = [REPO_ROOT / "README.md",
         *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# Words that describe how the software came about rather than what it is.
HISTORY_WORDS = ("session", "sessions", "round", "rounds", "earlier",
                 "superseded", "tuning diary", "first test run", "was",
                 "used to", "previously", "originally", "no longer")
FENCE_LANGUAGES = {"python", "bash", "bibtex"}
ALLOWED_EXTERNAL_LINKS = ("https://arxiv.org/abs/2412.10182",)

_TMP_PATH = re.compile(r'"/tmp/([A-Za-z0-9_.-]+)')


def _page_id(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO_ROOT))


def python_blocks(text: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def config_of_workdir(name: str) -> tuple[pathlib.Path, str] | None:
  """``(configs/X.py, its runlocal argument)`` of the config named ``name``.

  ``configs/NAME.py`` itself, else ``configs/DATASET.py`` with
  ``head=HEAD`` for ``NAME = DATASET_HEAD`` and HEAD in its ``HEADS``.
  """
  configs = REPO_ROOT / "configs"
  if (configs / f"{name}.py").is_file():
    return configs / f"{name}.py", "runlocal"
  for path in sorted(configs.glob("*.py")):
    if name.startswith(f"{path.stem}_"):
      spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      head = name[len(path.stem) + 1:]
      if head in getattr(module, "HEADS", ()):
        return path, f"head={head},runlocal"
  return None


def test_config_of_workdir():
  configs = REPO_ROOT / "configs"
  assert config_of_workdir("default") == (configs / "default.py", "runlocal")
  assert config_of_workdir("delicious_mhc") == (configs / "delicious.py",
                                                "head=mhc,runlocal")
  assert config_of_workdir("shakespeare_mhp") == (configs / "shakespeare.py",
                                                  "head=mhp,runlocal")
  assert config_of_workdir("delicious_mhc_export") is None


@pytest.fixture(scope="module")
def runlocal_workdir(tmp_path_factory):
  """A config's runlocal variant trained once per module -> its workdir."""
  root = tmp_path_factory.mktemp("workdirs")
  trained = {}

  def get(name: str) -> pathlib.Path:
    if name not in trained:
      config = config_lib.from_file(*config_of_workdir(name))
      train.train_and_evaluate(config, root / name)
      trained[name] = root / name
    return trained[name]
  return get


def test_page_list():
  names = {p.name for p in PAGES}
  assert {"README.md", "heads.md", "training.md", "data.md", "inference.md",
          "results.md", "benchmarks.md", "reliability.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_blocks_run(page, shared_data, runlocal_workdir, tmp_path):
  text = page.read_text()
  blocks = python_blocks(text)
  namespace = {"__name__": f"doc_{page.stem}"}
  for i, block in enumerate(blocks):
    block = block.replace('"../shared/data/', f'"{shared_data}/')

    def redirect(match):
      name = match.group(1)
      if config_of_workdir(name):
        return f'"{runlocal_workdir(name)}'
      return f'"{tmp_path / name}'
    block = _TMP_PATH.sub(redirect, block)
    exec(compile(block, f"{_page_id(page)} python block {i}", "exec"),  # pylint: disable=exec-used
         namespace)


def test_readme_has_its_python_examples():
  assert len(python_blocks((REPO_ROOT / "README.md").read_text())) >= 2


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_code_fences_are_known_languages(page):
  """A ```py block would be skipped by the runner: only ```python runs."""
  lines = page.read_text().splitlines()
  opening = [line for i, line in enumerate(lines) if line.startswith("```")
             and sum(1 for l in lines[:i] if l.startswith("```")) % 2 == 0]
  for line in opening:
    assert line[3:] in FENCE_LANGUAGES, f"{page.name}: fence {line!r}"


def test_readme_is_a_front_door():
  text = (REPO_ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= README_MAX_LINES
  assert "## Results on real extreme label sets" in text
  assert "python benchmarks/extreme.py" in text
  assert "```bibtex\n@article{liang2024mhe," in text


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_development_history(page):
  text = page.read_text()
  for word in HISTORY_WORDS:
    hits = [n for n, line in enumerate(text.splitlines(), 1)
            if re.search(rf"\b{re.escape(word)}\b", line, flags=re.I)]
    assert not hits, f"{page.name} lines {hits}: {word!r}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_stay_in_the_repository(page):
  text = page.read_text()
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if target.startswith(("http://", "https://")):
      assert target in ALLOWED_EXTERNAL_LINKS, f"{page.name}: {target}"
      continue
    path = target.split("#")[0]
    if path:
      assert (page.parent / path).exists(), f"{page.name}: {target}"


def test_readme_commands_match_ci():
  text = (REPO_ROOT / "README.md").read_text()
  assert ("python3 -m venv .venv && . .venv/bin/activate && "
          'pip install -e ".[train]" && python -m mhe_jax.main '
          "--config=configs/default.py --workdir=/tmp/mhe_default") in text
  ci = (REPO_ROOT / ".ci" / "run").read_text()
  test_cmd = 'pip install -e ".[test]" && python -m pytest -q'
  assert test_cmd in text and test_cmd in ci


def test_demo_runs():
  out = subprocess.run(
      [sys.executable, "-m", "mhe_jax.demo", "--num_classes=100000",
       "--batch=8", "--k=3"], capture_output=True, text=True, timeout=120,
      check=True)
  assert "top-3 of 100000 labels for 8 examples" in out.stdout
