"""benchmarks/extreme.py: rows, classifier cost, merge, table and plot."""

import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from mhe_jax import LabelCodec
from mhe_jax.data import datasets
import tiny_config as tiny_config_lib


def _load(name, path):
  if name not in sys.modules:  # absl flags: define once per module name
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


@pytest.fixture(scope="module")
def bench():
  # extreme.py imports xmc_accuracy (whose flags it uses); share the module
  # test_xmc_accuracy.py loads, so its flags are defined once.
  acc = _load("xmc_accuracy_under_test",
              REPO_ROOT / "benchmarks" / "xmc_accuracy.py")
  sys.modules.setdefault("xmc_accuracy", acc)
  return _load("extreme_under_test", REPO_ROOT / "benchmarks" / "extreme.py")


def test_config_arguments_and_split(bench):
  assert bench.config_arg("mhc", quick=False) == "head=mhc"
  assert bench.config_arg("mhs", quick=True) == "head=mhs,runlocal"
  assert bench.config_arg("best", quick=False) is None
  assert bench.config_arg("best", quick=True) == "runlocal"
  assert bench.config_arg("vanilla_ls", quick=True) == \
      "head=vanilla,fit=least_squares,runlocal"
  with pytest.raises(ValueError, match="unknown head method"):
    bench.config_arg("unidec", quick=False)
  config = tiny_config_lib.get_config()
  bench.check_test_split(config, "tiny")
  config.data.validation_fraction = 0.2
  with pytest.raises(ValueError, match="validation"):
    bench.check_test_split(config, "tiny")
  with pytest.raises(ValueError, match="not test"):
    bench.head_row("mhc", "citeulike_t", "x", {"eval_split": "validation"},
                   {}, "r")
  with pytest.raises(ValueError, match="unknown method"):
    bench.collect(["citeulike_t"], ["lightdxml"], quick=True, run="r")


@pytest.mark.parametrize("head", ["vanilla", "mhp"])
def test_classifier_cost_counts_by_hand(bench, head):
  config = tiny_config_lib.get_config()  # C=500, F=2000, d=32, batch 64
  config.head.type = head
  data = datasets.load_dataset(config.data, config.seed)
  cost = bench.classifier_cost(config, data, repeats=1)
  c, d = 500, 32
  outputs = c if head == "vanilla" else sum(LabelCodec.balanced(c, 2).radices)
  assert cost["classifier_params"] == d * outputs + outputs
  # encoder: [2000, 32] embedding, one 32 x 32 layer with bias
  assert cost["model_params"] == 2000 * d + d * d + d + d * outputs + outputs
  assert cost["classifier_rows"] == 64 and cost["classifier_feature_dim"] == d
  assert 0 < cost["classifier_labelled_rows"] <= 64
  mem = cost["classifier_memory"]
  assert cost["classifier_memory_bytes"] == sum(mem.values())
  # float32 parameters and [64, 32] features come in; the gradients go out
  assert mem["argument_bytes"] >= 4 * (cost["classifier_params"] + 64 * d)
  assert mem["output_bytes"] >= 4 * cost["classifier_params"]
  assert isinstance(cost["classifier_step_seconds"], float)


def _interactions(root, num_users=160, num_items=300, seed=0):
  rng = np.random.default_rng(seed)
  lines = []
  for user in range(1, num_users + 1):
    items = rng.choice(np.arange(1, num_items + 1), rng.integers(5, 10),
                       replace=False)
    lines += [f"{user} {item}" for item in items]
  path = root / "amazon_beauty" / "interactions.txt"
  path.parent.mkdir(parents=True)
  path.write_text("\n".join(lines) + "\n")


def test_sequence_head_row(bench, tmp_path):
  # configs/amazon_beauty.py:head=mhp,runlocal on a small interaction log:
  # the head sees batch x max_len rows, masked where no target.
  _interactions(tmp_path)
  row = bench.run_head("mhp", "amazon_beauty", quick=True, run="r1",
                       data_dir=str(tmp_path), repeats=1)
  assert row["config"] == "configs/amazon_beauty.py:head=mhp,runlocal"
  assert row["kind"] == "mhe_jax" and row["head"] == "mhp"
  for key in bench.COLUMNS["amazon_beauty"]:
    assert 0.0 <= row[key] <= 1.0, key
  # batch x runlocal max_len = 2560 positions, compacted to data.train_rows
  assert row["classifier_rows"] == 1280
  # every user has 3..7 training targets, so most positions are padding
  assert 128 * 2 <= row["classifier_labelled_rows"] <= 128 * 7
  radices = LabelCodec.balanced(300, 2).radices
  assert row["classifier_params"] == 32 * sum(radices) + sum(radices)
  assert row["num_params"] > row["classifier_params"]
  assert row["settings"]["config"] == row["config"]
  assert {"device_kind", "jax", "machine"} <= set(row["settings"])
  assert row["run"] == "r1" and row["steps"] == 20
  json.dumps(row)
  # The measured head sees the rows the model's compaction keeps: every
  # labelled position of the batch, in order, then padding.
  config, _ = bench.load_config("amazon_beauty", "mhp", True, str(tmp_path))
  data = bench._dataset(config)  # pylint: disable=protected-access
  kept = bench.head_inputs(config, data)
  config.data.train_rows = 0
  full = bench.head_inputs(config, data)
  n = int(full["where"].sum())
  np.testing.assert_array_equal(kept["labels"][:n],
                                full["labels"][full["where"]])
  assert kept["where"][:n].all() and not kept["where"][n:].any()


def _head(dataset, method, head, step, run="r1", **metrics):
  return {"dataset": dataset, "method": method, "kind": "mhe_jax",
          "config": f"configs/{dataset}.py:head={head}", "head": head,
          "train_seconds": 12.0, "num_params": 2_000_000,
          "classifier_params": 100_000, "classifier_step_seconds": step,
          "classifier_memory_bytes": 3 * 2**20, "run": run,
          "settings": {"config": "c", "device_kind": "cpu", "jax": "0.x",
                       "machine": "m"}, **metrics}


def _stub_rows(bench):
  cite = lambda p1, p5: {"P@1": p1, "P@3": 0.4, "P@5": p5, "nDCG@5": 0.4,
                         "PSP@5": 0.1}
  beauty = lambda hr, nd: {"HR@1": 0.01, "HR@5": 0.03, "HR@10": hr,
                           "NDCG@5": 0.02, "NDCG@10": nd,
                           "sampled/HR@10": 0.3, "sampled/NDCG@10": 0.2}
  return [
      _head("citeulike_t", "vanilla", "vanilla", 0.4, **cite(0.6, 0.37)),
      _head("citeulike_t", "mhp", "mhp", 0.1, **cite(0.5, 0.33)),
      _head("citeulike_t", "mhc", "mhc", 0.05, **cite(0.55, 0.34)),
      _head("citeulike_t", "best", "mhc", 0.05, run="r0", **cite(0.56, 0.30)),
      {"dataset": "citeulike_t", "method": "omikuji", "kind": "peer",
       "train_seconds": 39.0, "settings": "defaults", **cite(0.611, 0.373)},
      {"dataset": "citeulike_t", "method": "napkinxc_plt", "kind": "peer",
       "train_seconds": 28.0, "settings": "defaults", **cite(0.594, 0.38)},
      {"dataset": "citeulike_t", "method": "pecos_xr_linear", "kind": "peer",
       "skipped": "pecos not importable"},
      _head("amazon_beauty", "vanilla", "vanilla", 1.6, **beauty(0.05, 0.03)),
      _head("amazon_beauty", "mhs", "mhs", 0.02, **beauty(0.04, 0.02)),
  ] + bench.published_rows("amazon_beauty")


def test_cost_rows_with_and_without_compaction(bench, tmp_path):
  _interactions(tmp_path)
  rows = bench.cost_rows(["amazon_beauty"], ["mhp"], quick=True,
                         data_dir=str(tmp_path), repeats=1)
  # runlocal: 128 users x 20 positions, compacted to data.train_rows = 1280.
  assert [r["train_rows"] for r in rows] == [1280, 0]
  assert [r["classifier_rows"] for r in rows] == [1280, 128 * 20]
  assert rows[0]["classifier_labelled_rows"] == \
      rows[1]["classifier_labelled_rows"]
  with pytest.raises(ValueError, match="measures heads"):
    bench.cost_rows(["amazon_beauty"], ["omikuji"], quick=True,
                    data_dir=str(tmp_path), repeats=1)


def test_published_rows(bench):
  rows = {r["method"]: r for r in bench.published_rows("amazon_beauty")}
  got = {m: (r["HR@10"], r["NDCG@10"]) for m, r in rows.items()}
  assert got == {"sasrec_plus": (0.0533, 0.0327),
                 "sasrec_plus_3000": (0.0490, 0.0295),
                 "bert4rec": (0.0338, 0.0187),
                 "sasrec_bce": (0.0246, 0.0126)}
  for r in rows.values():
    assert "Klenitskiy" in r["citation"]
    assert "antklen/sasrec-bert4rec-recsys23" in r["source"]
    assert "full ranking" in r["protocol"]
  assert bench.published_rows("citeulike_t") == []


def test_merge_replaces_same_dataset_and_method(bench):
  old = {"runs": [{"time": "t0"}], "rows": [
      _head("citeulike_t", "mhp", "mhp", 9.0, run="r0", **{"P@1": 0.1}),
      _head("citeulike_t", "mhs", "mhs", 9.0, run="r0", **{"P@1": 0.2}),
      _head("amazon_beauty", "mhp", "mhp", 9.0, run="r0", **{"HR@10": 0.3})]}
  new = [_head("citeulike_t", "mhp", "mhp", 0.1, **{"P@1": 0.5}),
         _head("citeulike_t", "vanilla", "vanilla", 0.4, **{"P@1": 0.6})]
  merged = bench.merge(old, new)
  assert merged["runs"] == old["runs"]
  keys = [(r["dataset"], r["method"]) for r in merged["rows"]]
  assert keys == [("citeulike_t", "vanilla"), ("citeulike_t", "mhp"),
                  ("citeulike_t", "mhs"), ("amazon_beauty", "mhp")]
  by_key = {(r["dataset"], r["method"]): r for r in merged["rows"]}
  assert by_key[("citeulike_t", "mhp")]["P@1"] == 0.5
  assert by_key[("citeulike_t", "mhs")]["P@1"] == 0.2  # kept


def test_markdown_marks_best_and_ratios(bench):
  text = bench.markdown_table({"rows": _stub_rows(bench)})
  lines = {line.split(" | ")[0]: line for line in text.splitlines()
           if line.startswith("| ")}
  mhc = lines["| mhe_jax mhc: mhc (`citeulike_t.py:head=mhc`)"]
  best = lines["| mhe_jax best: mhc (`citeulike_t.py:head=mhc`)"]
  mhp = lines["| mhe_jax mhp: mhp (`citeulike_t.py:head=mhp`)"]
  vanilla = lines["| mhe_jax vanilla: vanilla (`citeulike_t.py:head=vanilla`)"]
  omikuji = lines["| omikuji (peer)"]
  napkin = lines["| napkinXC PLT (peer)"]
  # best MHE head per metric: P@1 56.00 (best), P@5 34.00 (mhc); vanilla is
  # no MHE head and never bold
  assert "**56.00**" in best and "| 55.00 |" in mhc
  assert "**34.00**" in mhc and "**" not in vanilla
  assert "*61.10*" in omikuji and "*38.00*" in napkin
  assert "| 59.40 |" in napkin
  # vanilla / MHE classifier step, same run only ('best' is from run r0)
  assert mhp.endswith("| 4.0x |") and mhc.endswith("| 8.0x |")
  assert best.endswith("| - |") and vanilla.endswith("| - |")
  assert "pecos_xr_linear: skipped (pecos not importable)" in text
  sasrec = lines["| SASRec+ (full softmax CE) (published)"]
  assert "| 5.33 |" in sasrec and "| 3.27 |" in sasrec
  mhs = lines["| mhe_jax mhs: mhs (`amazon_beauty.py:head=mhs`)"]
  assert mhs.endswith("| 80.0x |") and "**4.00**" in mhs
  assert "| clf step ms |" in text and "Klenitskiy" in text


def test_step_ratio_pairs_rows_fitted_the_same_way(bench):
  ls = lambda row: dict(row, fit="least_squares")
  vanilla = _head("citeulike_t", "vanilla", "vanilla", 0.4, run="r")
  vanilla_ls = ls(_head("citeulike_t", "vanilla_ls", "vanilla", 0.3, run="r"))
  mhc = _head("citeulike_t", "mhc", "mhc", 0.05, run="r")
  best = ls(_head("citeulike_t", "best", "mhc", 0.02, run="r"))
  rows = [vanilla, vanilla_ls, mhc, best]
  assert bench.step_ratio(mhc, rows) == pytest.approx(0.4 / 0.05)
  assert bench.step_ratio(best, rows) == pytest.approx(0.3 / 0.02)
  assert bench.step_ratio(best, [vanilla, best]) is None
  assert bench.step_ratio(vanilla_ls, rows) is None  # not an MHE head


def test_plot_writes_png(bench, tmp_path):
  path = tmp_path / "extreme.png"
  bench.plot({"rows": _stub_rows(bench)}, str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
