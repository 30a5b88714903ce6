"""The README's quickstart and main command run as written."""

import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_python_blocks_run(shared_data):
  text = (REPO_ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 2, "README lost its python examples"
  for i, block in enumerate(blocks):
    block = block.replace('"../shared/data/', f'"{shared_data}/')
    exec(compile(block, f"README python block {i}", "exec"), {})


def test_readme_commands_match_ci():
  text = (REPO_ROOT / "README.md").read_text()
  assert ("python -m mhe_jax.main --config=configs/default.py "
          "--workdir=/tmp/mhe_default") in text
  ci = (REPO_ROOT / ".ci" / "run").read_text()
  test_cmd = 'pip install -e ".[test]" && python -m pytest -q'
  assert test_cmd in text and test_cmd in ci


def test_demo_runs():
  out = subprocess.run(
      [sys.executable, "-m", "mhe_jax.demo", "--num_classes=100000",
       "--batch=8", "--k=3"], capture_output=True, text=True, timeout=120,
      check=True)
  assert "top-3 of 100000 labels for 8 examples" in out.stdout
