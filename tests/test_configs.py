"""Every configs/*.py loads, validates and documents its own command.

A few representative 'runlocal' variants also train end to end.
"""

import importlib.util
import json
import pathlib

import pytest

from conftest import REPO_ROOT
from mhe_jax import config_lib
from mhe_jax import train

CONFIG_DIR = REPO_ROOT / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))
ML_KEYS = ("P@1", "P@3", "P@5", "PSP@5")


def load_module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"configs_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Every (config file, head) of the modules that take ``head=...``.
HEAD_VARIANTS = [(path, head) for path in CONFIG_FILES
                 for head in getattr(load_module(path), "HEADS", ())]


def test_config_files_exist():
  names = {p.stem for p in CONFIG_FILES}
  expected = {"default", "xc_files", "synthetic_1m_mhp", "bibtex",
              "delicious", "shakespeare", "citeulike_t", "amazon_beauty"}
  assert expected <= names, sorted(expected - names)
  heads = {(p.stem, h) for p, h in HEAD_VARIANTS}
  for dataset in ("bibtex", "delicious"):
    assert {(dataset, h) for h in ("best", "vanilla", "mhp", "mhc", "mhs",
                                   "unidec", "lightdxml")} <= heads
  assert {("shakespeare", h)
          for h in ("vanilla", "mhp", "mhp3", "mhs")} <= heads


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_and_validates(path, arg):
  config = load_module(path).get_config(arg)
  config_lib.validate(config)
  if arg == "runlocal":  # never longer than the full config
    assert config.num_train_steps <= load_module(path).get_config().num_train_steps


@pytest.mark.parametrize("path,head", HEAD_VARIANTS,
                         ids=[f"{p.stem}:{h}" for p, h in HEAD_VARIANTS])
def test_head_variant_loads_and_validates(path, head):
  module = load_module(path)
  config = module.get_config(f"head={head}")
  local = module.get_config(f"head={head},runlocal")
  config_lib.validate(config)
  config_lib.validate(local)
  assert config.name == local.name == f"{path.stem}_{head}"
  assert local.num_train_steps <= config.num_train_steps
  assert local.data.name == config.data.name


@pytest.mark.parametrize("path", sorted({p for p, _ in HEAD_VARIANTS}),
                         ids=lambda p: p.stem)
def test_unknown_head_raises_and_lists_the_heads(path):
  module = load_module(path)
  with pytest.raises(ValueError, match=r"head='nope'; known: \[") as e:
    module.get_config("head=nope")
  assert all(repr(h) in str(e.value) for h in module.HEADS)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_docstring_gives_command_hardware_walltime(path):
  doc = load_module(path).__doc__
  assert doc, f"{path.name} has no docstring"
  name = path.stem
  command = f"python -m mhe_jax.main --config=configs/{name}.py --workdir="
  assert command in " ".join(doc.split()), (
      f"{path.name}: docstring lacks the command {command!r}")
  for word in ("Hardware:", "Walltime:", "Reached:"):
    assert word in doc, f"{path.name}: docstring lacks {word!r}"


def test_from_file_applies_overrides():
  path = CONFIG_DIR / "shakespeare.py"
  expected = load_module(path).get_config("head=mhp,runlocal")
  expected.head.type = "mhc"
  expected.head.beam = 4
  config = config_lib.from_file(path, "head=mhp,runlocal",
                                {"head.type": "mhc", "head.beam": 4})
  assert config.to_dict() == expected.to_dict()
  with pytest.raises(ValueError, match="head.bem"):
    config_lib.from_file(path, None, {"head.bem": 4})


def _runlocal(name, arg="", **overrides):
  """``configs/<name>.py:<arg>,runlocal`` with dotted-key overrides."""
  config = load_module(CONFIG_DIR / f"{name}.py").get_config(
      ",".join(filter(None, (arg, "runlocal"))))
  for key, value in overrides.items():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return config


def test_runlocal_bibtex_mhp_trains(tmp_path):
  results = train.train_and_evaluate(_runlocal("bibtex", "head=mhp"),
                                     tmp_path)
  assert results["dataset"] == "bibtex" and results["eval_split"] == "test"
  assert set(ML_KEYS) <= set(results)
  assert results["P@1"] > 0.05, results  # random guessing: ~1.5%
  assert (tmp_path / "results.json").exists()


def test_runlocal_shakespeare_mhs_trains(tmp_path):
  results = train.train_and_evaluate(_runlocal("shakespeare", "head=mhs"),
                                     tmp_path)
  assert not results["multilabel"]
  assert {"acc@1", "acc@5"} <= set(results)
  assert results["acc@5"] > 0.05, results  # top words ("the", "I", ...)


def test_runlocal_xc_files_on_bibtex_trains(tmp_path, shared_data):
  config = _runlocal("xc_files", **{
      "data.train": str(shared_data / "bibtex" / "train.txt"),
      "data.test": str(shared_data / "bibtex" / "test.txt"),
      "head.type": "mhc"})
  results = train.train_and_evaluate(config, tmp_path)
  assert results["dataset"] == "xc_files" and results["head"] == "mhc"
  assert results["num_classes"] == 159
  assert set(ML_KEYS) <= set(results)


def test_from_json_restores_a_saved_config_and_skips_retired_keys(tmp_path):
  expected = load_module(CONFIG_DIR / "bibtex.py").get_config("head=mhc")
  saved = json.loads(expected.to_json())
  saved["head"]["retired_option"] = 3  # a key this version does not declare
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  restored = config_lib.from_json(path)
  assert "retired_option" not in restored.head
  assert restored.encoder.hidden == (512,)  # JSON list -> the config's tuple
  assert restored.to_json(sort_keys=True) == expected.to_json(sort_keys=True)


def test_parse_arg():
  args = config_lib.parse_arg("head=mhc, runlocal", head="mhs", runlocal=False,
                              steps=10)
  assert (args.head, args.runlocal, args.steps) == ("mhc", True, 10)
  assert config_lib.parse_arg(None, head="mhs").head == "mhs"
  assert config_lib.parse_arg("steps=7,runlocal=false", steps=1,
                              runlocal=True).to_dict() == {"steps": 7,
                                                           "runlocal": False}
  with pytest.raises(ValueError, match=r"unknown config argument 'hed'.*"
                     r"known: \['head', 'runlocal'\]"):
    config_lib.parse_arg("hed=mhc", head="mhs", runlocal=False)
  with pytest.raises(ValueError, match="needs a value"):
    config_lib.parse_arg("head", head="mhs")
  with pytest.raises(ValueError, match="not an integer"):
    config_lib.parse_arg("steps=many", steps=1)


@pytest.mark.parametrize("head", ["vanilla", "mhp", "mhc", "mhs"])
def test_citeulike_head_variants(head):
  module = load_module(CONFIG_DIR / "citeulike_t.py")
  config = module.get_config(f"head={head}")
  local = module.get_config(f"head={head},runlocal")
  config_lib.validate(config)
  assert config.head.type == local.head.type == head
  assert config.data.name == "citeulike_t"
  assert local.num_train_steps < config.num_train_steps
  assert config.head.fit == "gradient"
  with pytest.raises(ValueError, match="known"):
    module.get_config("head=tree")
  if head in ("vanilla", "mhc"):
    fitted = module.get_config(f"head={head},fit=least_squares")
    config_lib.validate(fitted)
    assert fitted.head.fit == "least_squares"
    assert fitted.num_train_steps == 1
    assert fitted.head.hidden == fitted.encoder.embed_dim
    if head == "mhc":  # the no-argument config is the closed-form MHC
      assert module.get_config().to_dict() == {
          **fitted.to_dict(), "name": "citeulike_t_best"}
  else:
    with pytest.raises(ValueError, match="fit=least_squares fits"):
      module.get_config(f"head={head},fit=least_squares")
