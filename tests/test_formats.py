"""Tests for mhe_jax.data.formats: XC text and Mulan ARFF readers/writer."""

import pathlib
import re

import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax.data import formats
from mhe_jax.data.formats import FormatError, XMCData

# name: (num_labels, {split: rows}, num_features, label cardinality of the
# whole dataset as published with it, Mulan / Tsoumakas et al.).
DATASETS = {
    "bibtex": (159, {"train": 4880, "test": 2515}, 1836, 2.402),
    "delicious": (983, {"train": 12920, "test": 3185}, 500, 19.020),
}
CASES = [(d, s) for d in DATASETS for s in ("train", "test")]


def _assert_csr_identical(a: sp.csr_matrix, b: sp.csr_matrix):
  assert a.shape == b.shape
  assert a.dtype == b.dtype == np.float32
  a, b = a.sorted_indices(), b.sorted_indices()
  np.testing.assert_array_equal(a.indptr, b.indptr)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.data, b.data)


def _plain_label_counts_xc(path: pathlib.Path) -> list[int]:
  """Labels per row by a plain-Python reading of the XC text file."""
  with open(path) as f:
    rows = f.read().splitlines()[1:]
  return [len(r.split(" ", 1)[0].split(",")) if r.split(" ", 1)[0] else 0
          for r in rows]


def _plain_label_counts_arff(path: pathlib.Path, num_labels: int) -> list[int]:
  """Labels per row by a plain-Python reading of the sparse ARFF file."""
  with open(path) as f:
    lines = [l.strip() for l in f]
  num_attributes = sum(l.lower().startswith("@attribute") for l in lines)
  data = lines[[l.lower() for l in lines].index("@data") + 1:]
  counts = []
  for row in data:
    if not row or row.startswith("%"):
      continue
    pairs = [p.split() for p in row.strip("{}").split(",") if p.strip()]
    counts.append(sum(1 for i, v in pairs
                      if int(i) >= num_attributes - num_labels and v == "1"))
  return counts


@pytest.mark.parametrize("name,split", CASES)
def test_real_data_arff_equals_xc(shared_data, name, split):
  num_labels, rows, num_features, _ = DATASETS[name]
  d = shared_data / name
  xc = formats.read_xc(d / f"{split}.txt")
  arff = formats.read_arff(d / f"{name}-{split}.arff",
                           labels_xml=d / f"{name}.xml")
  assert xc.X.shape == arff.X.shape == (rows[split], num_features)
  assert xc.Y.shape == arff.Y.shape == (rows[split], num_labels)
  _assert_csr_identical(xc.X, arff.X)
  _assert_csr_identical(xc.Y, arff.Y)
  assert xc.label_names is None
  assert len(arff.label_names) == num_labels
  assert all(n.startswith("TAG_") for n in arff.label_names)
  # Label cardinality, from independent plain-Python parses of both files.
  per_row = _plain_label_counts_xc(d / f"{split}.txt")
  assert per_row == _plain_label_counts_arff(d / f"{name}-{split}.arff",
                                             num_labels)
  np.testing.assert_array_equal(np.diff(xc.Y.indptr), per_row)
  assert xc.Y.nnz / xc.num_examples == pytest.approx(np.mean(per_row))


@pytest.mark.parametrize("name", DATASETS)
def test_label_cardinality_matches_published(shared_data, name):
  num_labels, rows, _, published = DATASETS[name]
  d = shared_data / name
  total = sum(sum(_plain_label_counts_xc(d / f"{s}.txt")) for s in rows)
  assert total / sum(rows.values()) == pytest.approx(published, abs=0.01)


def test_arff_num_labels_equals_xml(shared_data):
  d = shared_data / "bibtex"
  by_xml = formats.read_arff(d / "bibtex-test.arff",
                             labels_xml=d / "bibtex.xml")
  by_count = formats.read_arff(d / "bibtex-test.arff", num_labels=159)
  assert by_xml.equals(by_count)


def test_delicious_label_names_keep_backslashes(shared_data):
  d = shared_data / "delicious"
  data = formats.read_arff(d / "delicious-test.arff",
                           labels_xml=d / "delicious.xml")
  assert "TAG_m\\'usica" in data.label_names
  assert "TAG_dise\\~no" in data.label_names
  assert len(set(data.label_names)) == 983


def test_write_xc_reproduces_real_file(shared_data, tmp_path):
  src = shared_data / "bibtex" / "test.txt"
  out = tmp_path / "test.txt"
  formats.write_xc(formats.read_xc(src), out)
  assert out.read_bytes() == src.read_bytes()


def test_write_xc_round_trip_arbitrary_values(tmp_path):
  rng = np.random.default_rng(0)
  n, f, l = 50, 30, 12
  mask = rng.random((n, f)) < 0.2
  mask[4] = False  # Row 4: no features.
  dense = np.where(mask, (rng.random((n, f)) - 0.5)
                   * 10.0 ** rng.integers(-8, 9, (n, f)), 0.0)
  rows, cols = np.nonzero(mask)
  vals = dense[rows, cols].astype(np.float32)
  vals[:6] = [1.0, 0.1, -0.0, 3e38, 1e-45, 0.0]  # -0, max, denormal, zero.
  X = sp.csr_matrix((vals, (rows, cols)), shape=(n, f))
  assert X.nnz == rows.size  # The explicit zeros are stored.
  y = rng.random((n, l)) < 0.15
  y[3] = False  # Row 3: no labels.
  Y = sp.csr_matrix(y.astype(np.float32))
  data = XMCData(X=X, Y=Y)
  path = tmp_path / "d.txt"
  formats.write_xc(data, path)
  back = formats.read_xc(path)
  assert back.equals(data)
  assert np.array_equal(np.signbit(back.X.data), np.signbit(X.data))
  lines = path.read_text().splitlines()
  assert lines[0] == f"{n} {f} {l}"
  assert lines[1 + 3].startswith(" ")  # No labels: leading space.
  assert ":1 " in path.read_text() or ":1\n" in path.read_text()


def test_write_xc_rejects_weighted_labels(tmp_path):
  Y = sp.csr_matrix(np.array([[0.5, 0.0]], np.float32))
  X = sp.csr_matrix(np.ones((1, 2), np.float32))
  with pytest.raises(ValueError, match="binary labels"):
    formats.write_xc(XMCData(X=X, Y=Y), tmp_path / "w.txt")


def test_xc_unsorted_indices_are_sorted_and_edge_rows(tmp_path):
  path = tmp_path / "u.txt"
  path.write_text("4 10 5\n3,1 9:2.5 2:-1 5:1e-3\n \n0\n\t7:1\n")
  d = formats.read_xc(path)
  np.testing.assert_array_equal(d.padded_labels(), [[1, 3], [-1, -1],
                                                    [0, -1], [-1, -1]])
  idx, val = d.padded_features()
  np.testing.assert_array_equal(idx[0], [2, 5, 9])
  np.testing.assert_array_equal(val[0], np.float32([-1, 1e-3, 2.5]))
  assert d.X[3, 7] == 1 and d.X.nnz == 4


def test_xc_crlf_and_no_final_newline(tmp_path):
  path = tmp_path / "c.txt"
  path.write_bytes(b"2 3 2\r\n0 1:1\r\n1 2:0.5")
  d = formats.read_xc(path)
  assert d.Y.toarray().tolist() == [[1, 0], [0, 1]]
  assert d.X.toarray().tolist() == [[0, 1, 0], [0, 0, 0.5]]


def _expect_error(path: pathlib.Path, content: str | bytes, line: int | None,
                  match: str, reader=formats.read_xc, **kwargs):
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  with pytest.raises(FormatError) as info:
    reader(path, **kwargs)
  msg = str(info.value)
  assert str(path) in msg
  if line is not None:
    assert f"line {line}:" in msg
    assert info.value.line == line
  assert re.search(match, msg), msg
  return info.value


XC_BAD = {
    "empty": ("", 1, "empty file"),
    "blank": ("\n  \n", 1, "empty file"),
    "header_two_fields": ("2 3\n0 1:1\n", 1, "malformed header"),
    "header_text": ("two 3 2\n", 1, "malformed header"),
    "header_negative": ("-1 3 2\n", 1, "malformed header"),
    "too_few_rows": ("3 4 2\n0 1:1\n1 2:1\n", 4, "unexpected end of file"),
    "too_many_rows": ("1 4 2\n0 1:1\n1 2:1\n", 3, "more rows"),
    "feature_out_of_range": ("2 4 2\n0 1:1\n1 4:1\n", 3, "feature index 4 >="),
    "label_out_of_range": ("2 4 2\n0 1:1\n0,2 3:1\n", 3, "label index 2 >="),
    "negative_feature": ("2 4 2\n0 1:1\n1 -1:1\n", 3, "negative feature"),
    "negative_label": ("2 4 2\n-1 1:1\n1 2:1\n", 2, "negative label"),
    "non_numeric_value": ("2 4 2\n0 1:1\n1 2:abc\n", 3, "non-numeric"),
    "nan_value": ("2 4 2\n0 1:nan\n1 2:1\n", 2, "non-numeric"),
    "overflow_value": ("2 4 2\n0 1:1e39\n1 2:1\n", 2, "float32"),
    "non_integer_label": ("2 4 2\n0 1:1\nx 2:1\n", 3, "not a non-negative"),
    "float_label": ("2 4 2\n0 1:1\n1.0 2:1\n", 3, "not a non-negative"),
    "unicode_digit": ("2 4 2\n0 1:1\n1 \u0663:1\n", 3, "not a non-negative"),
    "truncated_token": ("2 4 2\n0 1:1\n1 2:1 3:", 3, r"truncated last line"),
    "truncated_index": ("2 4 2\n0 1:1\n1 2:1 3", 3, r"truncated last line"),
    "mid_truncated_token": ("2 4 2\n0 1: 2:1\n1 2:1\n", 2, "missing feature"),
    "no_space_before_features": ("1 4 2\n1:1 2:1\n", 2, "must start with"),
    "duplicate_feature": ("2 4 2\n0 1:1\n1 2:1 0:1 2:3\n", 3,
                          "index 2 given twice"),
    "duplicate_label": ("2 4 2\n0 1:1\n1,0,1 2:1\n", 3, "label 1 listed twice"),
    "empty_label_entry": ("2 4 2\n0 1:1\n1,,0 2:1\n", 3, "empty entry"),
    "earliest_error_wins": ("3 4 2\n0 9:1\n0 1:1\n1 2:x\n", 2, "feature index"),
    "earliest_error_wins_2": ("3 4 2\n0 1:1\n0 1::1\n1 9:1\n", 3, "non-num"),
    "bad_utf8": (b"2 4 2\n0 1:1\n1 \xff:1\n", 3, "not valid utf-8"),
}


@pytest.mark.parametrize("case", XC_BAD)
def test_xc_errors(tmp_path, case):
  content, line, match = XC_BAD[case]
  _expect_error(tmp_path / f"{case}.txt", content, line, match)


ARFF_HEAD = """% A comment.
@RELATION 'toy: -C -2'

@attribute f0 numeric
@attribute 'f 1' {0,1}
@Attribute "f\\"2" REAL
@attribute lab_a {0,1}
@attribute lab_b {0,1}
@data
"""
ARFF_XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="lab_a"></label>
<label name="lab_b"/>
</labels>
"""


def test_arff_dialect(tmp_path):
  path = tmp_path / "toy.arff"
  path.write_bytes((ARFF_HEAD + "{0 0.5,3 1}\n% in-data comment\n\n"
                    "{4 1, 1 1}\n-2.5,0,0,1,1\r\n{}\n{2 7,3 0}").encode())
  xml = tmp_path / "toy.xml"
  xml.write_text(ARFF_XML)
  d = formats.read_arff(path, labels_xml=xml)
  assert d.label_names == ["lab_a", "lab_b"]
  np.testing.assert_array_equal(
      d.X.toarray(), np.float32([[0.5, 0, 0], [0, 1, 0], [-2.5, 0, 0],
                                 [0, 0, 0], [0, 0, 7]]))
  np.testing.assert_array_equal(
      d.Y.toarray(), [[1, 0], [0, 1], [1, 1], [0, 0], [0, 0]])
  assert d.equals(formats.read_arff(path, num_labels=2))


def test_arff_labels_in_the_middle(tmp_path):
  path = tmp_path / "mid.arff"
  path.write_text("@relation r\n@attribute a numeric\n@attribute y {0,1}\n"
                  "@attribute b numeric\n@data\n{0 1,1 1,2 4}\n0,0,5\n")
  xml = tmp_path / "mid.xml"
  xml.write_text('<labels><label name="y"><label name="a"/></label></labels>')
  # Nested labels count; labels are numbered in attribute order.
  d = formats.read_arff(path, labels_xml=xml)
  assert d.label_names == ["a", "y"]
  assert d.X.toarray().tolist() == [[4], [5]]
  assert d.Y.toarray().tolist() == [[1, 1], [0, 0]]


def test_arff_needs_exactly_one_label_spec(tmp_path):
  path = tmp_path / "x.arff"
  path.write_text(ARFF_HEAD + "{0 1}\n")
  with pytest.raises(ValueError, match="exactly one"):
    formats.read_arff(path)
  with pytest.raises(ValueError, match="exactly one"):
    formats.read_arff(path, labels_xml=path, num_labels=2)


# Data rows start on line 10 of ARFF_HEAD + rows.
ARFF_BAD = {
    "empty": ("", 1, "empty file"),
    "index_out_of_range": (ARFF_HEAD + "{0 1}\n{5 1}\n", 11, "index 5 >="),
    "negative_index": (ARFF_HEAD + "{0 1}\n{-1 1}\n", 11, "negative attr"),
    "non_numeric": (ARFF_HEAD + "{0 1}\n{0 x}\n", 11, "non-numeric value"),
    "missing_value": (ARFF_HEAD + "1,0,?,0,1\n", 10, r"missing values"),
    "dense_too_short": (ARFF_HEAD + "1,0,1,0\n", 10, "4 values, expected 5"),
    "label_value": (ARFF_HEAD + "{0 1}\n\n{3 2}\n", 12, "expected 0 or 1"),
    "duplicate": (ARFF_HEAD + "{0 1,1 1,0 2}\n", 10, "index 0 given twice"),
    "truncated_last": (ARFF_HEAD + "{0 1}\n{0 1,1 1,", 11, "truncated last"),
    "truncated_pair": (ARFF_HEAD + "{0 1}\n{0 1,1", 11, "truncated last"),
    "no_data": (ARFF_HEAD.replace("@data\n", ""), 9, "no @data"),
    "string_type": ("@relation r\n@attribute s string\n@data\n", 2, "string"),
    "nominal_text": ("@relation r\n@attribute s {a,b}\n@data\n", 2, "'a'"),
    "duplicate_attribute": ("@relation r\n@attribute a numeric\n"
                            "@attribute a {0,1}\n@data\n", 3, "duplicate"),
    "bad_keyword": ("@relation r\n@atribute a numeric\n@data\n", 2,
                    "expected @relation"),
    "earliest_wins": (ARFF_HEAD + "{9 1}\n{0 x}\n", 10, "index 9 >="),
}


@pytest.mark.parametrize("case", ARFF_BAD)
def test_arff_errors(tmp_path, case):
  content, line, match = ARFF_BAD[case]
  _expect_error(tmp_path / f"{case}.arff", content, line, match,
                reader=formats.read_arff, num_labels=2)


def test_arff_xml_errors(tmp_path):
  path = tmp_path / "toy.arff"
  path.write_text(ARFF_HEAD + "{0 1}\n")
  xml = tmp_path / "bad.xml"
  _expect_error(xml, '<labels>\n<label name="lab_a"/>\n<label name="zz"/>'
                "\n</labels>", 3, "'zz' is not an attribute",
                reader=lambda p: formats.read_arff(path, labels_xml=p))
  _expect_error(xml, '<labels>\n<label name="lab_a">\n</labels>', 3,
                "malformed XML",
                reader=lambda p: formats.read_arff(path, labels_xml=p))
  _expect_error(xml, '<labels>\n<label name="lab_a"/>\n<label name="lab_a"/>'
                "\n</labels>", 3, "listed twice",
                reader=lambda p: formats.read_arff(path, labels_xml=p))


def test_read_names_real_citeulike(shared_data):
  d = shared_data / "citeulike_t"
  names = formats.read_names(d / "labels.txt", 52946)
  with open(d / "labels.txt", encoding="utf-8") as f:
    plain = f.read().split("\n")[:-1]
  assert names == plain
  assert names[1] == "homomorphism"


@pytest.mark.parametrize("text,count,match", [
    ("a\nb\n", 3, r"2 names for 3 labels"),
    ("a\n\nb\n", None, r"line 2: empty name"),
    ("a\nb\na\n", None, r"line 3: name 'a' given twice \(first on line 1\)"),
    ("", None, r"empty file"),
])
def test_read_names_errors(tmp_path, text, count, match):
  path = tmp_path / "names.txt"
  path.write_text(text)
  with pytest.raises(FormatError, match=match) as e:
    formats.read_names(path, count)
  assert str(path) in str(e.value)


def test_read_names_crlf_and_no_final_newline(tmp_path):
  path = tmp_path / "names.txt"
  path.write_bytes(b"x y\r\nz")
  assert formats.read_names(path, 2) == ["x y", "z"]


def test_xc_header_size_beyond_int64_is_a_format_error(tmp_path):
  # Found by tests/test_fuzz.py: was a bare OverflowError from scipy.
  path = tmp_path / "big.txt"
  path.write_text("1 99999999999999999999 2\n0 1:1\n")
  with pytest.raises(FormatError, match=r"line 1: header size "
                     r"99999999999999999999 does not fit in int64"):
    formats.read_xc(path)
  path.write_text("1 9223372036854775807 2\n0 1:1\n")
  assert formats.read_xc(path).num_features == 2**63 - 1


def test_undecodable_byte_line_counts_cr_line_ends(tmp_path):
  # Found by tests/test_fuzz.py: lines ending in a lone \r were not counted.
  path = tmp_path / "cr.txt"
  path.write_bytes(b"2 4 2\r0 1:1\r\xff 2:1\r")
  with pytest.raises(FormatError, match=r"cr.txt, line 3: not valid utf-8"):
    formats.read_xc(path)
  path.write_bytes(b"2 4 2\r\n0 1:1\r\n\xff 2:1\r\n")
  with pytest.raises(FormatError, match=r"cr.txt, line 3: not valid utf-8"):
    formats.read_xc(path)


def test_parse_xc_rows_is_read_xc_on_lines_in_memory(tmp_path):
  rows = ["0,2 1:0.5 3:2", " 0:1", "", "1 2:3 1:4"]
  path = tmp_path / "d.txt"
  path.write_text("4 5 3\n" + "\n".join(rows) + "\n")
  whole = formats.read_xc(path)
  parsed = formats.parse_xc_rows(path, rows, 5, 3)
  assert parsed.equals(whole)
  # Errors name the file line: first_line is the line of rows[0].
  with pytest.raises(FormatError, match=r"d.txt, line 12: feature index 7 >= "
                     r"number of features 5"):
    formats.parse_xc_rows(path, ["0 1:1", "0 7:1"], 5, 3, first_line=11)
  with pytest.raises(FormatError, match=r"line 3: .*\(truncated last line\?\)"):
    formats.parse_xc_rows(path, ["0 1:1", "0 2:"], 5, 3,
                          last_unterminated=True)


def test_padded_rows_of_one_row_equal_the_batch_path():
  m = sp.random(30, 50, density=0.2, format="csr", dtype=np.float32,
                random_state=0)
  ids_all, values_all = formats.padded_rows(m, 24)
  for r in (0, 7, 29):
    ids, values = formats.padded_rows(m[r:r + 1], 24)
    np.testing.assert_array_equal(ids, ids_all[r:r + 1])
    np.testing.assert_array_equal(values, values_all[r:r + 1])
  ids, values = formats.padded_rows(m[3:4], 24, with_values=False)
  assert values is None and np.array_equal(ids, ids_all[3:4])


def test_smooth_idf_is_sklearns_smooth_idf():
  m = sp.csr_matrix(np.array([[1., 0., 2.], [0., 0., 3.], [0., 0., 0.]]))
  np.testing.assert_allclose(
      formats.smooth_idf(m), np.log(4 / np.array([2., 1., 3.])) + 1,
      rtol=1e-6)
