"""Bad-input fuzz cases for the readers, LabelCodec and product_topk.

Shared by ``tests/test_fuzz.py`` (bounded hypothesis runs) and
``benchmarks/fuzz_readers.py`` (N cases per reader and a table). For every
target there is

* a hypothesis strategy of cases: a well-formed document (or argument set)
  drawn from a small model, then damaged by token edits (a piece replaced by
  a huge, negative, NaN, non-numeric or odd-whitespace token, deleted,
  duplicated lines, wrong counts) and byte edits (truncation, a byte set to
  a random value, CRLF or CR line ends, no final newline, a byte order mark,
  an empty, whitespace-only or binary file);
* a plain-Python reference parser written from the reader's documented
  format, independent of the library's code: it returns the expected
  result, or raises :class:`Refuse` with the file and 1-based line (or the
  argument) that is wrong;
* a check that runs the library on the case and classifies the outcome.

Outcomes (:data:`STATUSES`): ``equal`` (parsed, same as the reference),
``refused`` (the library's documented error, naming the file and the line,
or the argument, the reference points at), and the failures ``wrong`` (a
different result), ``accepted_bad`` (parsed input the reference refuses),
``refused_good`` (refused input the reference parses), ``bad_error`` (the
right error type without the file / line / argument the reference names)
and ``crash`` (any other exception).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import xml.sax.saxutils
from collections import Counter
from typing import Any, Callable

from hypothesis import strategies as st
import numpy as np

STATUSES = ("equal", "refused", "wrong", "accepted_bad", "refused_good",
            "bad_error", "crash")
FAILURES = STATUSES[2:]


class Refuse(Exception):
  """The reference parser's verdict that a case is invalid.

  Attributes:
    line: 1-based line of the problem, or None for a whole-file problem.
    lines: when several lines are equally valid answers (the interaction
      log's checks run in passes), the set of them; else None.
    file: which file of the case: ``"data"`` or ``"xml"``.
    arg: for an argument error, the names of the arguments that are wrong
      (the error must name one of them); else None.
  """

  prefix: bytes | None = None  # undecodable files: the complete lines before

  def __init__(self, line: int | None = None, *, lines=None,
               file: str = "data", arg: tuple[str, ...] | str | None = None):
    if isinstance(arg, str):
      arg = (arg,)
    super().__init__(line, lines, file, arg)
    self.line, self.lines, self.file, self.arg = line, lines, file, arg


@dataclasses.dataclass
class Case:
  """One input: file contents by role, and the reader's keyword arguments."""

  files: dict[str, bytes]
  kwargs: dict[str, Any]


@dataclasses.dataclass
class Outcome:
  status: str
  kind: str = ""    # refusals: error class and first word of the message
  detail: str = ""  # failures: what differed


# ---------------------------------------------------------------------------
# Shared reference pieces: the documented rules, written out plainly.

ASCII_WS = " \t\x0b\x0c"


def is_digits(s: str) -> bool:
  """Non-empty and only the ASCII digits 0-9."""
  return s != "" and all("0" <= c <= "9" for c in s)


def is_index(s: str) -> bool:
  """A 0-based index as the readers take it: 1 to 18 ASCII digits."""
  return is_digits(s) and len(s) <= 18


def is_decimal(s: str) -> bool:
  """A decimal number: [sign] digits [. digits] | [sign] . digits, [e exp]."""
  if s[:1] in ("+", "-"):
    s = s[1:]
  mantissa, exponent = s, None
  for e in ("e", "E"):
    if e in mantissa:
      mantissa, _, exponent = mantissa.partition(e)
      break
  if exponent is not None:
    if exponent[:1] in ("+", "-"):
      exponent = exponent[1:]
    if not is_digits(exponent):
      return False
  whole, _, frac = mantissa.partition(".")
  if whole and not is_digits(whole):
    return False
  if frac and not is_digits(frac):
    return False
  return bool(whole or frac)


def to_float32(s: str) -> np.float32 | None:
  """The float32 value of a decimal string, or None when not finite."""
  with np.errstate(over="ignore"):
    v = np.float32(float(s))
  return v if np.isfinite(v) else None


def text_lines(raw: bytes) -> tuple[list[str], str]:
  """Lines of a UTF-8 file, any of the three line ends; Refuse when unreadable.

  A leading byte order mark is dropped; an empty or all-whitespace file is
  refused on line 1. Returns the lines (no final empty line) and the text.
  """
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    head = raw[:e.start]
    refusal = Refuse(len(split_lines(head.decode("utf-8"))))
    refusal.prefix = head[:max(head.rfind(b"\n"), head.rfind(b"\r")) + 1]
    raise refusal from None
  if text.startswith("\ufeff"):
    text = text[1:]
  if not text.strip():
    raise Refuse(1)
  lines = split_lines(text)
  if lines[-1] == "":
    lines.pop()
  return lines, text


def split_lines(text: str) -> list[str]:
  """Splits at \\r\\n, \\r and \\n (and nowhere else)."""
  out, cur, i = [], [], 0
  while i < len(text):
    c = text[i]
    if c == "\r" or c == "\n":
      out.append("".join(cur))
      cur = []
      if c == "\r" and text[i + 1:i + 2] == "\n":
        i += 1
    else:
      cur.append(c)
    i += 1
  out.append("".join(cur))
  return out


def split_ws(s: str, ws: str) -> list[str]:
  """Non-empty runs of characters not in ``ws``."""
  out, cur = [], []
  for c in s + ws[0]:
    if c in ws:
      if cur:
        out.append("".join(cur))
      cur = []
    else:
      cur.append(c)
  return out


# ---------------------------------------------------------------------------
# Damage: token edits on a document of lines of pieces, then byte edits.

ODD_TOKENS = (
    "-1", "-0", "+3", "007", "nan", "NaN", "inf", "-inf", "Infinity", "1e39",
    "-1e39", "3.4028235e38", "3.4028236e38", "1e-50", "1e999", "1.5", ".5",
    "5.", "1e5", "E5", "1e", "..", "0x10", "1_0", "99999999999999999",
    "999999999999999999", "1000000000000000000", "9223372036854775807",
    "9223372036854775808", "99999999999999999999999", "000000000000000000001",
    "abc", "?", "", " ", "  ", "\t", ",", ",,", ":", "::", "{", "}", "%", "'",
    "\"", "\\", "@data", "@attribute", "\xa0", "\x0b", "\x0c", "\x1c", "\x85",
    "\u2028", "\x00", "\ufeff", "\u0661", "\uff13", "\u00b2", "\u00e9", "\r",
    "\n", "x" * 40)
BYTE_OPS = ("truncate", "set_byte", "crlf", "cr", "no_final_newline", "bom",
            "empty", "whitespace", "binary")


@st.composite
def damaged(draw, lines: list[list[str]], *, ints: tuple[int, ...] = ()
            ) -> bytes:
  """``lines`` (lists of pieces, joined) after random token and byte edits."""
  lines = [list(p) for p in lines]
  ops = draw(st.lists(st.sampled_from(
      ("replace", "insert", "delete", "drop_line", "dup_line", "blank_line")),
      max_size=2))
  pool = st.one_of(st.sampled_from(ODD_TOKENS),
                   st.sampled_from(ints or (0,)).map(str),
                   st.integers(-2**64, 2**64).map(str))
  for op in ops:
    if not lines:
      break
    i = draw(st.integers(0, len(lines) - 1))
    if op in ("replace", "insert", "delete"):
      j = draw(st.integers(0, len(lines[i])))
      if op == "insert":
        lines[i].insert(j, draw(pool))
      elif j < len(lines[i]):
        lines[i][j] = draw(pool) if op == "replace" else ""
    elif op == "drop_line":
      del lines[i]
    elif op == "dup_line":
      lines.insert(i, list(lines[i]))
    else:
      lines.insert(i, [draw(st.sampled_from(("", " ", "\t")))])
  raw = "".join("".join(p) + "\n" for p in lines).encode("utf-8")
  for op in draw(st.lists(st.sampled_from(BYTE_OPS), max_size=2)):
    if op == "truncate" and raw:
      raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif op == "set_byte" and raw:
      pos = draw(st.integers(0, len(raw) - 1))
      raw = raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
    elif op == "crlf":
      raw = raw.replace(b"\n", b"\r\n")
    elif op == "cr":
      raw = raw.replace(b"\n", b"\r")
    elif op == "no_final_newline":
      raw = raw.rstrip(b"\n")
    elif op == "bom":
      raw = b"\xef\xbb\xbf" + raw
    elif op == "empty":
      raw = b""
    elif op == "whitespace":
      raw = draw(st.sampled_from((b" ", b"\n\n", b" \t\r\n", b"\xef\xbb\xbf")))
    elif op == "binary":
      raw = draw(st.binary(max_size=64))
  return raw


VALUE_STRS = ("1", "0", "-0", "0.5", "1e-3", "-2.25", ".5", "5.", "1E2", "+3",
              "0.1", "1e-45", "3.4028234e38")
values = st.one_of(
    st.sampled_from(VALUE_STRS),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr))


# ---------------------------------------------------------------------------
# Result checking.

def write_files(case: Case, tmp: pathlib.Path, names: dict[str, str]
                ) -> dict[str, str]:
  paths = {}
  for role, data in case.files.items():
    path = tmp / names[role]
    path.write_bytes(data)
    paths[role] = os.fspath(path)
  return paths


def judge(run: Callable[[], Any], reference: Callable[[], Any],
          same: Callable[[Any, Any], str], paths: dict[str, str],
          errors: tuple[type, ...]) -> Outcome:
  """Runs the library and the reference and compares them (see module doc)."""
  from mhe_jax.data.formats import FormatError  # pylint: disable=g-import-not-at-top
  try:
    expected, refusal = reference(), None
  except Refuse as r:
    expected, refusal = None, r
  try:
    got = run()
  except errors as e:
    message = str(e)
    kind = f"{type(e).__name__}: " + _first_word(e)
    if refusal is None:
      return Outcome("refused_good", kind, message)
    if refusal.arg is not None:
      ok = any(a in message for a in refusal.arg)
      return Outcome("refused" if ok else "bad_error", kind, message)
    path = paths[refusal.file]
    if isinstance(e, FormatError):
      lines = refusal.lines if refusal.lines is not None else {refusal.line}
      prefix = (path if e.line is None else f"{path}, line {e.line}") + ": "
      ok = e.path == path and e.line in lines and message.startswith(prefix)
    else:  # A whole-file ValueError: it must name the file.
      ok = refusal.line is None and path in message
    if not ok:
      return Outcome("bad_error", kind,
                     f"{message!r}; expected {path} line {refusal.line} "
                     f"{refusal.lines or ''}")
    return Outcome("refused", kind)
  except Exception as e:  # pylint: disable=broad-except
    return Outcome("crash", type(e).__name__, f"{type(e).__name__}: {e}")
  if refusal is not None:
    return Outcome("accepted_bad", detail=f"reference refuses line "
                   f"{refusal.line} of {refusal.file} (arg {refusal.arg})")
  diff = same(got, expected)
  return Outcome("wrong", detail=diff) if diff else Outcome("equal")


def _first_word(e: Exception) -> str:
  message = str(e)
  path = getattr(e, "path", None)
  if path is not None:
    line = getattr(e, "line", None)
    prefix = (path if line is None else f"{path}, line {line}") + ": "
    message = message[len(prefix):] if message.startswith(prefix) else message
  words = message.split()
  if words and words[0].endswith(":") and os.sep in words[0]:
    words = words[1:]  # A whole-file ValueError: "path: message".
  return words[0] if words else ""


def _rows_of(m) -> list[list[tuple[int, float]]]:
  out = []
  for r in range(m.shape[0]):
    a, b = m.indptr[r], m.indptr[r + 1]
    out.append(list(zip(m.indices[a:b].tolist(), m.data[a:b].tolist())))
  return out


def same_xmc(got, expected) -> str:
  """'' when an XMCData equals the reference (shape, X rows, Y rows, names)."""
  shape_x, shape_y, x_rows, y_rows, names = expected
  if got.X.shape != shape_x or got.Y.shape != shape_y:
    return f"shapes {got.X.shape} {got.Y.shape}, expected {shape_x} {shape_y}"
  if got.X.dtype != np.float32 or got.Y.dtype != np.float32:
    return f"dtypes {got.X.dtype} {got.Y.dtype}"
  if _rows_of(got.X) != x_rows:
    return f"X rows {_rows_of(got.X)}, expected {x_rows}"
  if [[i for i, v in r] for r in _rows_of(got.Y)] != y_rows or (
      got.Y.nnz and not np.all(got.Y.data == 1)):
    return f"Y rows {_rows_of(got.Y)}, expected {y_rows}"
  if got.label_names != names:
    return f"label names {got.label_names}, expected {names}"
  return ""


# ---------------------------------------------------------------------------
# XC text format.

@st.composite
def xc_cases(draw) -> Case:
  n, nf, nl = (draw(st.integers(0, 4)), draw(st.integers(0, 6)),
               draw(st.integers(0, 5)))
  header = [str(n), " ", str(nf), " ", str(nl)]
  if draw(st.booleans()):
    header = [draw(st.sampled_from(("", " ")))] + header + [
        draw(st.sampled_from(("", " ", "\t")))]
  lines = [header]
  for _ in range(n):
    labels = draw(st.lists(st.integers(0, nl - 1), unique=True, max_size=3)
                  ) if nl else []
    feats = draw(st.lists(st.integers(0, nf - 1), unique=True, max_size=4)
                 ) if nf else []
    row = [",".join(map(str, labels))] if labels else [
        draw(st.sampled_from(("", " ", "\t")))]
    for f in feats:
      row += [draw(st.sampled_from((" ", "\t", "  "))), str(f), ":",
              draw(values)]
    if draw(st.integers(0, 4)) == 0:
      row.append(draw(st.sampled_from((" ", "\t"))))
    lines.append(row)
  return Case({"data": draw(damaged(lines, ints=(n, nf, nl, n + 1)))}, {})


def reference_xc(raw: bytes):
  """(X shape, Y shape, X rows, Y rows, None) per read_xc's docstring."""
  lines, _ = text_lines(raw)
  header = lines[0].split()
  if len(header) != 3 or not all(is_digits(h) for h in header):
    raise Refuse(1)
  n, nf, nl = map(int, header)
  if max(n, nf, nl) >= 2**63:
    raise Refuse(1)
  body = lines[1:]
  x_rows, y_rows = [], []
  for i, line in enumerate(body[:n]):
    if line == "" or line[0] in " \t":
      label_text, rest = "", line
    else:
      cut = min([p for p in (line.find(" "), line.find("\t")) if p >= 0],
                default=len(line))
      label_text, rest = line[:cut], line[cut:]
    labels = []
    if label_text:
      for piece in label_text.split(","):
        if not is_index(piece) or int(piece) >= nl or int(piece) in labels:
          raise Refuse(i + 2)
        labels.append(int(piece))
    feats = {}
    for tok in split_ws(rest, " \t"):
      index, colon, value = tok.partition(":")
      if not (colon and is_index(index) and is_decimal(value)):
        raise Refuse(i + 2)
      v = to_float32(value)
      if int(index) >= nf or int(index) in feats or v is None:
        raise Refuse(i + 2)
      feats[int(index)] = v
    y_rows.append(sorted(labels))
    x_rows.append([(j, float(feats[j])) for j in sorted(feats)])
  if len(body) < n:
    raise Refuse(len(body) + 2)
  if len(body) > n:
    raise Refuse(n + 2)
  return (n, nf), (n, nl), x_rows, y_rows, None


def check_xc(case: Case, tmp: pathlib.Path) -> Outcome:
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "train.txt"})
  return judge(lambda: formats.read_xc(paths["data"]),
               lambda: reference_xc(case.files["data"]), same_xmc, paths,
               (formats.FormatError,))


@st.composite
def xc_stream_cases(draw) -> Case:
  case = draw(xc_cases())
  case.kwargs["batch_size"] = draw(st.integers(1, 3))
  return case


def check_xc_stream(case: Case, tmp: pathlib.Path) -> Outcome:
  """streaming.iter_xc_batches: the streamed X equals the reference's X."""
  from mhe_jax import streaming  # pylint: disable=g-import-not-at-top
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "stream.txt"})

  def run():
    batches, sizes = streaming.iter_xc_batches(paths["data"],
                                               case.kwargs["batch_size"])
    return sizes, list(batches)

  def same(got, expected):
    (n, nf, nl), batches = got
    shape_x, shape_y, x_rows, _, _ = expected
    if (n, nf) != shape_x or nl != shape_y[1]:
      return f"sizes {(n, nf, nl)}, expected {shape_x} {shape_y}"
    rows = [r for b in batches for r in _rows_of(b)]
    if any(b.shape[1] != nf or b.dtype != np.float32 for b in batches):
      return f"batch shapes {[b.shape for b in batches]}"
    return "" if rows == x_rows else f"X rows {rows}, expected {x_rows}"

  return judge(run, lambda: reference_xc_stream(case.files["data"]), same,
               paths, (formats.FormatError,))


def reference_xc_stream(raw: bytes):
  """reference_xc, except that a file read line by line may name a problem
  on a line before an undecodable one instead."""
  try:
    return reference_xc(raw)
  except Refuse as r:
    if r.prefix is None:
      raise
    try:
      reference_xc(r.prefix)
      earlier = set()
    except Refuse as p:
      earlier = {p.line} if p.line < r.line else set()
    raise Refuse(r.line, lines={r.line} | earlier) from None


# ---------------------------------------------------------------------------
# Mulan ARFF.

ARFF_NAMES = (("a", "a"), ("b1", "b1"), ("x_y", "x_y"),
              ("TAG_m\\'usica", "TAG_m\\'usica"), ("'lab el'", "lab el"),
              ("\"q\\\"x\"", "q\"x"), ("'t\\tab'", "t\tab"), ("\u00e9t\u00e9",
                                                            "\u00e9t\u00e9"),
              ("c%d", "c%d"), ("'{br}'", "{br}"))


@st.composite
def arff_cases(draw) -> Case:
  num_attr = draw(st.integers(1, 5))
  picks = draw(st.lists(st.sampled_from(ARFF_NAMES), min_size=num_attr,
                        max_size=num_attr, unique_by=lambda p: p[1]))
  num_labels = draw(st.integers(1, num_attr))
  is_label = [j >= num_attr - num_labels for j in range(num_attr)]
  lines = []
  if draw(st.booleans()):
    lines.append(["% ", "comment"])
  lines.append([draw(st.sampled_from(("@relation", "@RELATION"))), " ",
                draw(st.sampled_from(("r", "'rel: -C 3'", "\"x y\"")))])
  lines.append([])
  for (written, _), lab in zip(picks, is_label):
    kind = ("{0,1}" if lab and draw(st.booleans()) else
            draw(st.sampled_from(("numeric", "NUMERIC", "real", "integer",
                                  "{0, 1}", "{'0','1'}"))))
    lines.append([draw(st.sampled_from(("@attribute", "@ATTRIBUTE"))), " ",
                  written, draw(st.sampled_from((" ", "\t", "  "))), kind])
  lines.append(["@data"])
  for _ in range(draw(st.integers(0, 4))):
    vals = [draw(st.sampled_from(("0", "1"))) if lab else draw(values)
            for lab in is_label]
    if draw(st.booleans()):  # sparse
      entries = draw(st.lists(st.integers(0, num_attr - 1), unique=True,
                              max_size=num_attr))
      row = ["{"]
      for k, j in enumerate(entries):
        row += ([", "] if k else []) + [str(j), " ", vals[j]]
      lines.append(row + ["}"])
    else:
      row = []
      for k, v in enumerate(vals):
        row += ([","] if k else []) + [v]
      lines.append(row)
    if draw(st.integers(0, 5)) == 0:
      lines.append([draw(st.sampled_from(("", "% note", "  ")))])
  files = {"data": draw(damaged(lines, ints=(num_attr, num_attr - 1)))}
  if draw(st.integers(0, 3)) == 0:
    label_picks = [p for p, lab in zip(picks, is_label) if lab]
    xml_lines = ['<?xml version="1.0" encoding="utf-8"?>',
                 '<labels xmlns="http://mulan.sourceforge.net/labels">']
    xml_lines += [f"<label name={xml.sax.saxutils.quoteattr(name)}></label>"
                  for _, name in label_picks]
    if draw(st.integers(0, 3)) == 0:
      xml_lines.append('<label name="not_an_attribute"></label>')
    xml_lines.append("</labels>")
    files["xml"] = ("\n".join(xml_lines) + "\n").encode("utf-8")
    return Case(files, {})
  return Case(files, {"num_labels": draw(st.sampled_from(
      (num_labels, num_labels, num_labels, 0, num_attr + 1)))})


def _arff_quoted(text: str, pos: int) -> tuple[str, int] | None:
  """A quoted ARFF string starting at text[pos]: (value, index after it)."""
  quote, out, i = text[pos], "", pos + 1
  escapes = {"n": "\n", "t": "\t", "r": "\r"}
  while i < len(text):
    if text[i] == "\\" and i + 1 < len(text):
      out += escapes.get(text[i + 1], text[i + 1])
      i += 2
    elif text[i] == quote:
      return out, i + 1
    else:
      out += text[i]
      i += 1
  return None


def _arff_name(text: str) -> tuple[str, str] | None:
  """(name, rest): a quoted name, or the run up to whitespace or '{'."""
  text = text.lstrip()
  if not text:
    return None
  if text[0] in "'\"":
    q = _arff_quoted(text, 0)
    return None if q is None else (q[0], text[q[1]:])
  end = 0
  while end < len(text) and not text[end].isspace() and text[end] != "{":
    end += 1
  return (text[:end], text[end:]) if end else None


def _arff_nominal_ok(body: str) -> bool:
  """Whether a nominal type body lists only numeric values (quoted or not)."""
  i = 0
  while True:
    while i < len(body) and body[i].isspace():
      i += 1
    if i < len(body) and body[i] in "'\"":
      q = _arff_quoted(body, i)
      if q is None:
        return False
      value, i = q
    else:
      j = body.find(",", i)
      j = len(body) if j < 0 else j
      value, i = body[i:j].strip(), j
    if not is_decimal(value):
      return False
    while i < len(body) and body[i].isspace():
      i += 1
    if i == len(body):
      return True
    if body[i] != ",":
      return False
    i += 1


def reference_arff(raw: bytes, xml_raw: bytes | None, num_labels):
  """(X shape, Y shape, X rows, Y rows, label names) per read_arff's doc."""
  lines, _ = text_lines(raw)
  names, data_at = [], None
  for i, line in enumerate(lines):
    s = line.strip()
    if not s or s.startswith("%"):
      continue
    word = s.split()[0]
    rest = s[len(word):]
    keyword = word.lower()
    if keyword == "@relation":
      if _arff_name(rest) is None:
        raise Refuse(i + 1)
    elif keyword == "@attribute":
      parsed = _arff_name(rest)
      if parsed is None or parsed[0] in names:
        raise Refuse(i + 1)
      kind = parsed[1].split("%")[0].strip()
      if kind.startswith("{"):
        if not kind.endswith("}") or not _arff_nominal_ok(kind[1:-1]):
          raise Refuse(i + 1)
      elif kind.lower() not in ("numeric", "real", "integer"):
        raise Refuse(i + 1)
      names.append(parsed[0])
    elif keyword == "@data" and not rest.strip() and names:
      data_at = i
      break
    else:
      raise Refuse(i + 1)
  if data_at is None:
    raise Refuse(len(lines) + 1)
  if xml_raw is not None:
    label_set = set()
    for lineno, line in enumerate(xml_raw.decode("utf-8").split("\n"), 1):
      if line.startswith("<label name="):
        name = xml.sax.saxutils.unescape(
            line[len("<label name=") + 1:line.index("></label>") - 1],
            {"&quot;": "\"", "&apos;": "'", "&#9;": "\t", "&#10;": "\n",
             "&#13;": "\r"})
        if name not in names:
          raise Refuse(lineno, file="xml")
        label_set.add(name)
    is_label = [n in label_set for n in names]
  else:
    if not 1 <= num_labels <= len(names):
      raise Refuse(arg="num_labels")
    is_label = [j >= len(names) - num_labels for j in range(len(names))]
  feature_no, label_no = {}, {}
  for j, lab in enumerate(is_label):
    (label_no if lab else feature_no)[j] = len(label_no if lab else feature_no)
  x_rows, y_rows = [], []
  for i in range(data_at + 1, len(lines)):
    s = lines[i].strip()
    if not s or s.startswith("%"):
      continue
    entries = []  # (attribute, float32, written explicitly)
    if s.startswith("{"):
      if not s.endswith("}"):
        raise Refuse(i + 1)
      body = s[1:-1]
      if split_ws(body, ASCII_WS):
        for piece in body.split(","):
          parts = split_ws(piece, ASCII_WS)
          if len(parts) != 2 or not is_index(parts[0]) or not is_decimal(
              parts[1]):
            raise Refuse(i + 1)
          entries.append((int(parts[0]), parts[1]))
    else:
      pieces = [p.strip(ASCII_WS) for p in s.split(",")]
      if len(pieces) != len(names) or not all(map(is_decimal, pieces)):
        raise Refuse(i + 1)
      entries = list(enumerate(pieces))
    x, y, seen = {}, [], set()
    for j, text in entries:
      v = to_float32(text)
      if j >= len(names) or j in seen or v is None:
        raise Refuse(i + 1)
      seen.add(j)
      if is_label[j]:
        if v not in (0, 1):
          raise Refuse(i + 1)
        if v == 1:
          y.append(label_no[j])
      elif v != 0 or s.startswith("{"):
        x[feature_no[j]] = float(v)
    x_rows.append(sorted(x.items()))
    y_rows.append(sorted(y))
  label_names = [n for n, lab in zip(names, is_label) if lab]
  n = len(x_rows)
  return ((n, len(feature_no)), (n, len(label_no)), x_rows, y_rows,
          label_names)


def check_arff(case: Case, tmp: pathlib.Path) -> Outcome:
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "data.arff", "xml": "labels.xml"})
  kwargs = dict(case.kwargs)
  if "xml" in paths:
    kwargs["labels_xml"] = paths["xml"]
  return judge(lambda: formats.read_arff(paths["data"], **kwargs),
               lambda: reference_arff(case.files["data"],
                                      case.files.get("xml"),
                                      case.kwargs.get("num_labels")),
               same_xmc, paths, (ValueError,))


# ---------------------------------------------------------------------------
# Raw text corpus (corpus.Corpus.from_file).

TEXT_PIECES = ("the", "The", "don't", "o'er", "'tis", "rogues'", "a", "b",
               "42", "7", ",", ".", ":", "?", "-", "'", "_", "\u00e9", "\u00df",
               "\u0130", "\u00b2", "\u00bd", "\u216b", "\u0661\u0662",
               "\u65e5\u672c", "e\u0301", "\U0001f600", "<unk>", " ", " ",
               "\n", "\t", "\xa0", "\u2028", "\x85", "\x0c")


@st.composite
def text_cases(draw) -> Case:
  pieces = draw(st.lists(st.sampled_from(TEXT_PIECES), max_size=30))
  lines = [[]]
  for p in pieces:
    if p == "\n":
      lines.append([])
    else:
      lines[-1].append(p)
  return Case({"data": draw(damaged(lines))},
              {"min_count": draw(st.integers(1, 3)),
               "test_fraction": draw(st.sampled_from((0.0, 0.1, 0.5, 0.9)))})


def _is_word_char(c: str) -> bool:
  # Letters of any script, and numeric characters that are not decimal
  # digits (superscripts, fractions, Roman numerals): Python's \w less
  # digits and '_'.
  return (c.isalpha() or c.isnumeric()) and not c.isdecimal()


def reference_tokens(text: str) -> list[str]:
  """Words (internal apostrophes kept), digit runs, single other symbols."""
  t, out, i = text.lower(), [], 0
  while i < len(t):
    c = t[i]
    if c.isspace():
      i += 1
      continue
    j = i + 1
    if _is_word_char(c):
      while j < len(t):
        if _is_word_char(t[j]):
          j += 1
        elif t[j] == "'" and j + 1 < len(t) and _is_word_char(t[j + 1]):
          j += 2
        else:
          break
    elif c.isdecimal():
      while j < len(t) and t[j].isdecimal():
        j += 1
    out.append(t[i:j])
    i = j
  return out


def reference_corpus(raw: bytes, min_count: int, test_fraction: float):
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise Refuse(len(split_lines(raw[:e.start].decode("utf-8")))) from None
  if text.startswith("\ufeff"):
    text = text[1:]
  tokens = reference_tokens(text)
  if not tokens:
    raise Refuse(None)
  boundary = len(tokens) - int(len(tokens) * test_fraction)
  counts = Counter(tokens[:boundary])
  kept = sorted((t for t in counts if counts[t] >= min_count),
                key=lambda t: (-counts[t], t))
  vocab = ["<unk>"] + kept
  index = {t: k for k, t in enumerate(vocab)}
  ids = [index.get(t, 0) for t in tokens]
  unk = sum(c for t, c in counts.items() if t not in index)
  return vocab, [unk] + [counts[t] for t in kept], ids, boundary


def check_text(case: Case, tmp: pathlib.Path) -> Outcome:
  from mhe_jax.data import corpus  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "corpus.txt"})

  def same(got, expected):
    vocab, counts, ids, boundary = expected
    have = (list(got.vocab), got.counts.tolist(), got.ids.tolist(),
            got.boundary)
    return "" if have == (vocab, counts, ids, boundary) else (
        f"corpus {have}, expected {expected}")

  return judge(lambda: corpus.Corpus.from_file(paths["data"], **case.kwargs),
               lambda: reference_corpus(case.files["data"], **case.kwargs),
               same, paths, (ValueError,))


# ---------------------------------------------------------------------------
# Interaction logs (both layouts).

BIG_IDS = (0, 1, 2, 3, 7, 10**17, 10**18 - 1, 10**18, 2**63 - 1)


@st.composite
def interaction_cases(draw, layout: str) -> Case:
  ids = st.one_of(st.integers(0, 9), st.sampled_from(BIG_IDS))
  users = draw(st.lists(ids, unique=True, min_size=1, max_size=4))
  lines = []
  stamps = layout == "pairs" and draw(st.booleans())
  for u in users:
    items = draw(st.lists(ids, min_size=1, max_size=4))
    if layout == "sequences":
      row = [str(u)]
      for it in items:
        row += [draw(st.sampled_from((" ", "\t", "  "))), str(it)]
      lines.append(row)
    else:
      for it in items:
        row = [str(u), " ", str(it)]
        if stamps:
          row += [" ", str(draw(st.sampled_from((0, 5, 9, 1700000000,
                                                 1700000000000000000))))]
        lines.append(row)
  kwargs = {"layout": draw(st.sampled_from((layout, "auto"))),
            "item_order": draw(st.sampled_from(("sorted", "first_seen"))),
            "repeats": draw(st.sampled_from(("error", "keep", "drop")))}
  return Case({"data": draw(damaged(lines, ints=BIG_IDS[-3:]))}, kwargs)


def reference_interactions(raw: bytes, layout: str, item_order: str,
                           repeats: str):
  """(user ids, item ids, dense sequences, repeats dropped) per the docstring.

  Problems are found in three passes (every line's syntax; then the layout's
  structure, in file order; then consecutive repeats, per user in time
  order); the line of any problem of the first pass that has one is a right
  answer, so Refuse lists them all.
  """
  lines, _ = text_lines(raw)
  rows, bad = [], set()
  for n, line in enumerate(lines, 1):
    fields = line.split()
    if not fields or not all(is_digits(f) and int(f) < 2**63 for f in fields):
      bad.add(n)
    rows.append((n, [int(f) if is_digits(f) else -1 for f in fields]))
  if bad:
    raise Refuse(min(bad), lines=bad)
  widths = {len(ids) for _, ids in rows}
  if layout == "auto":
    layout = "pairs" if widths in ({2}, {3}) else "sequences"
  users, seqs, first = [], [], {}
  if layout == "pairs":
    width = len(rows[0][1])
    if width not in (2, 3):
      raise Refuse(1)
    for n, ids in rows:
      if len(ids) != width:
        bad.add(n)
        continue
      if not users or users[-1] != ids[0]:
        if ids[0] in first:
          bad.add(n)
          continue
        first[ids[0]] = n
        users.append(ids[0])
        seqs.append([])
      seqs[-1].append((ids[2] if width == 3 else 0, len(seqs[-1]), ids[1], n))
    seqs = [[(it, n) for _, _, it, n in sorted(s)] for s in seqs]
  else:
    for n, ids in rows:
      if len(ids) < 2 or ids[0] in first:
        bad.add(n)
        continue
      first[ids[0]] = n
      users.append(ids[0])
      seqs.append([(it, n) for it in ids[1:]])
  if bad:
    raise Refuse(min(bad), lines=bad)
  dropped, out = 0, []
  for s in seqs:
    kept = [s[0]]
    for prev, cur in zip(s, s[1:]):
      if cur[0] == prev[0]:
        if repeats == "error":
          bad.add(cur[1])
        if repeats == "drop":
          dropped += 1
          continue
      kept.append(cur)
    out.append([it for it, _ in kept])
  if bad:
    raise Refuse(min(bad), lines=bad)
  if item_order == "sorted":
    items = sorted({it for s in out for it in s})
  else:
    items = list(dict.fromkeys(it for s in out for it in s))
  index = {it: k for k, it in enumerate(items)}
  return users, items, [[index[it] for it in s] for s in out], dropped


def check_interactions(case: Case, tmp: pathlib.Path) -> Outcome:
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  from mhe_jax.data import interactions  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "log.txt"})

  def same(got, expected):
    have = (got.user_ids.tolist(), got.item_ids.tolist(),
            got.sequences.to_lists(), got.repeats_dropped)
    return "" if have == expected else f"log {have}, expected {expected}"

  return judge(
      lambda: interactions.read_interactions(paths["data"], **case.kwargs),
      lambda: reference_interactions(case.files["data"], **case.kwargs),
      same, paths, (formats.FormatError,))


# ---------------------------------------------------------------------------
# One name per line (formats.read_names).

NAME_PIECES = ("a", "b", "label", "x y", "\u00e9", "\u65e5", " ", "\t", "1",
               "-", "'", "#")


@st.composite
def names_cases(draw) -> Case:
  names = draw(st.lists(
      st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=3).map(
          "".join).filter(lambda s: s.strip()),
      unique=True, max_size=5))
  count = draw(st.sampled_from((len(names), len(names), None, len(names) + 1,
                                max(len(names) - 1, 0))))
  return Case({"data": draw(damaged([[n] for n in names]))}, {"count": count})


def reference_names(raw: bytes, count: int | None):
  lines, _ = text_lines(raw)
  seen = set()
  for n, name in enumerate(lines, 1):
    if not name.strip() or name in seen:
      raise Refuse(n)
    seen.add(name)
  if count is not None and len(lines) != count:
    raise Refuse(None)
  return lines


def check_names(case: Case, tmp: pathlib.Path) -> Outcome:
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  paths = write_files(case, tmp, {"data": "labels.txt"})
  return judge(lambda: formats.read_names(paths["data"], **case.kwargs),
               lambda: reference_names(case.files["data"], **case.kwargs),
               lambda got, exp: "" if got == exp else f"{got} != {exp}",
               paths, (formats.FormatError,))


# ---------------------------------------------------------------------------
# LabelCodec: constructor arguments, then encode/decode arguments.

ODD_NUMBERS = (0, 1, -1, -3, 2.5, 2.0, float("nan"), float("inf"),
               float("-inf"), 2**31, 2**70, "3", "a", None, True,
               np.int64(4), np.float32(3.0), np.uint8(5), [], (2, 3))


def _integral(x) -> int | None:
  """int(x) for an integral real number (bool included), else None."""
  if isinstance(x, (bool, int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)) and math.isfinite(x) and x == int(x):
    return int(x)
  return None


@st.composite
def codec_cases(draw) -> Case:
  small = st.integers(2, 6)
  radices = draw(st.one_of(
      st.lists(small, min_size=1, max_size=3).map(tuple),
      st.lists(st.one_of(small, st.sampled_from(ODD_NUMBERS)), max_size=3),
      st.sampled_from((None, 5, "ab", np.array([3, 4]), (2**16, 2**16)))))
  ints = [_integral(r) for r in radices] if isinstance(
      radices, (tuple, list, np.ndarray)) else []
  cap = math.prod(i for i in ints if i is not None and 0 < i < 100) or 2
  num_classes = draw(st.one_of(st.integers(max(2, cap // 2), max(2, cap)),
                               st.sampled_from(ODD_NUMBERS)))
  c = max(2, _integral(num_classes) or 2)
  perm = None
  if 2 <= c <= 64 and draw(st.booleans()):
    perm = draw(st.one_of(st.permutations(range(c)).map(list),
                          st.sampled_from(([0] * c, list(range(c))[::-1][:-1],
                                           [c] + list(range(1, c)),
                                           [float(i) for i in range(c)],
                                           "ab"))))
  labels = draw(st.lists(st.one_of(st.integers(-1, c - 1),
                                   st.sampled_from((-2, c, 2**31, 2**40))),
                         max_size=6))
  dtype = draw(st.sampled_from(("int32", "int64", "float32", "bool")))
  digit_rows = draw(st.lists(st.lists(st.integers(-2, 7), min_size=len(ints),
                                      max_size=len(ints) + draw(
                                          st.sampled_from((0, 0, 0, 1)))),
                             max_size=4))
  return Case({}, {"radices": radices, "num_classes": num_classes,
                   "permutation": perm, "labels": labels,
                   "labels_dtype": dtype, "digits": digit_rows})


def reference_codec(radices, num_classes, permutation):
  """(radices, C, permutation list) per LabelCodec's docstring, or Refuse.

  Refuse names every argument that is wrong.
  """
  bad = set()
  rs = None
  if radices is not None and not isinstance(radices, (str, int)):
    rs = [_integral(r) for r in radices]
  if not rs or None in rs or min(rs) < 2:
    bad.add("radices")
  c = _integral(num_classes)
  if c is None or c < 2:
    bad.add("num_classes")
  if not bad and not c <= math.prod(rs) <= 2**31 - 1:
    bad.add("radices")
  if permutation is not None and c is not None:
    if isinstance(permutation, str) or not all(
        isinstance(p, int) for p in permutation) or sorted(
            permutation) != list(range(c)):
      bad.add("permutation")
  if bad:
    raise Refuse(arg=tuple(sorted(bad)))
  return tuple(rs), c, permutation


def reference_encode(codec_ref, labels, dtype):
  rs, c, perm = codec_ref
  if dtype in ("float32", "bool"):
    raise Refuse(arg="labels")
  if any(not -1 <= y < c for y in labels):
    raise Refuse(arg="labels")
  out = []
  for y in labels:
    if y == -1:
      out.append([-1] * len(rs))
      continue
    code = perm[y] if perm is not None else y
    digits = []
    for r in reversed(rs):
      digits.append(code % r)
      code //= r
    out.append(digits[::-1])
  return out


def reference_decode(codec_ref, digit_rows):
  rs, c, perm = codec_ref
  if any(len(d) != len(rs) for d in digit_rows):
    raise Refuse(arg="digits")
  out = []
  for d in digit_rows:
    if all(x == -1 for x in d):
      out.append(-1)
      continue
    if not all(0 <= x < r for x, r in zip(d, rs)):
      raise Refuse(arg="digits")
    code = 0
    for x, r in zip(d, rs):
      code = code * r + x
    if code >= c:
      raise Refuse(arg="digits")
    out.append(perm.index(code) if perm is not None else code)
  return out


def check_codec(case: Case, tmp: pathlib.Path) -> Outcome:
  """Constructor, then encode and decode; the first step that refuses ends."""
  del tmp
  from mhe_jax.ops.codec import LabelCodec  # pylint: disable=g-import-not-at-top
  kw = case.kwargs
  errors = (ValueError, TypeError)
  holder = {}

  def make():
    holder["codec"] = LabelCodec(kw["radices"], kw["num_classes"],
                                 kw["permutation"])
    return holder["codec"]

  def same_codec(got, expected):
    rs, c, perm = expected
    have = (got.radices, got.num_classes,
            None if got.permutation is None else got.permutation.tolist())
    want = (rs, c, None if perm == list(range(c)) else perm)
    return "" if have == want else f"codec {have}, expected {want}"

  ref_holder = {}

  def ref_make():
    ref_holder["ref"] = reference_codec(kw["radices"], kw["num_classes"],
                                        kw["permutation"])
    return ref_holder["ref"]

  out = judge(make, ref_make, same_codec, {}, errors)
  if out.status != "equal":
    return out
  codec, ref = holder["codec"], ref_holder["ref"]
  labels = np.asarray(kw["labels"], np.int64).astype(kw["labels_dtype"])
  if kw["labels_dtype"] == "int32":
    labels = np.asarray([y for y in kw["labels"] if -2**31 <= y < 2**31],
                        np.int32)
  out = judge(lambda: np.asarray(codec.encode(labels)).tolist(),
              lambda: reference_encode(ref, labels.tolist(),
                                       kw["labels_dtype"]),
              lambda g, e: "" if [list(r) for r in g] == e or (
                  not e and not g) else f"encode {g}, expected {e}",
              {}, errors)
  if out.status != "equal":
    return out
  digits = kw["digits"]
  if not digits or len({len(d) for d in digits}) != 1:
    return out
  arr = np.asarray(digits, np.int64)
  return judge(lambda: np.asarray(codec.decode(arr)).tolist(),
               lambda: reference_decode(ref, digits),
               lambda g, e: "" if g == e else f"decode {g}, expected {e}",
               {}, errors)


# ---------------------------------------------------------------------------
# product_topk arguments.

@st.composite
def topk_cases(draw) -> Case:
  rs = tuple(draw(st.lists(st.integers(2, 4), min_size=1, max_size=3)))
  cap = math.prod(rs)
  c = draw(st.integers(max(2, cap // 2), cap))
  perm = draw(st.one_of(st.none(), st.permutations(range(c)).map(list)))
  b = draw(st.integers(0, 3))
  logit = st.one_of(st.floats(-30, 30, width=32),
                    st.integers(-2, 2).map(float),
                    st.sampled_from((1e30, -1e30, float("-inf"),
                                     float("nan"))))
  heads = [draw(st.lists(st.lists(logit, min_size=r, max_size=r),
                         min_size=b, max_size=b)) for r in rs]
  shape_edit = draw(st.sampled_from(("none",) * 6 + (
      "drop_head", "extra_head", "wrong_width", "wrong_batch", "fused",
      "ints", "scalar")))
  k = draw(st.one_of(st.integers(1, c), st.integers(1, c),
                     st.sampled_from((0, -1, c + 1, 2.5, 2.0, float("nan"),
                                      float("inf"), "2", None,
                                      np.int64(1), 2**70))))
  return Case({}, {"radices": rs, "num_classes": c, "permutation": perm,
                   "heads": heads, "shape_edit": shape_edit, "k": k})


def _topk_inputs(kw):
  rs, heads = kw["radices"], kw["heads"]
  arrays = [np.asarray(h, np.float32).reshape(len(h), r)
            for h, r in zip(heads, rs)]
  edit = kw["shape_edit"]
  if edit == "drop_head":
    arrays = arrays[:-1]
  elif edit == "extra_head":
    arrays = arrays + [arrays[-1]]
  elif edit == "wrong_width":
    arrays[-1] = np.concatenate([arrays[-1], arrays[-1][:, :1]], axis=1)
  elif edit == "wrong_batch":
    arrays[-1] = np.concatenate([arrays[-1], np.zeros((1, rs[-1]),
                                                      np.float32)])
  elif edit == "fused":
    return np.concatenate(arrays, axis=1)
  elif edit == "ints":
    arrays = [np.clip(np.nan_to_num(a), -100, 100).astype(np.int32)
              for a in arrays]
  elif edit == "scalar":
    arrays[0] = np.float32(0)
  return arrays


def reference_topk_check(kw, arrays):
  """Refuse for bad arguments, else the explicit product scores [B, C]."""
  import jax  # pylint: disable=g-import-not-at-top
  rs, c, perm = kw["radices"], kw["num_classes"], kw["permutation"]
  if isinstance(arrays, np.ndarray) or len(arrays) != len(rs):
    raise Refuse(arg="head_logits")
  shapes = [np.shape(a) for a in arrays]
  if any(len(s) != 2 or s[1] != r for s, r in zip(shapes, rs)) or len(
      {s[0] for s in shapes}) != 1:
    raise Refuse(arg="head_logits")
  k = _integral(kw["k"])
  if k is None or not 1 <= k <= c:
    raise Refuse(arg="k")
  logps = [np.asarray(jax.nn.log_softmax(np.asarray(a, np.float32), -1))
           for a in arrays]
  b = shapes[0][0]
  scores = np.zeros((b, c), np.float32)
  for y in range(c):
    code = perm[y] if perm is not None else y
    digits = np.unravel_index(code, rs)
    total = np.zeros(b, np.float32)
    for lp, d in zip(logps, digits):
      total = (total + lp[:, d]).astype(np.float32)
    scores[:, y] = total
  return scores, k


def check_topk(case: Case, tmp: pathlib.Path) -> Outcome:
  """Scores and labels against the explicit product-space scores.

  Exact ties between unequal per-head terms may be filled by any of the
  tied labels (see product_topk's docstring), so the check is: k distinct
  valid labels, each returned score bit-equal to that label's explicit
  score, every label scoring above the k-th score returned, and order by
  (score descending, label ascending) where scores are not NaN.
  """
  del tmp
  from mhe_jax.ops.codec import LabelCodec  # pylint: disable=g-import-not-at-top
  from mhe_jax.ops.topk import product_topk  # pylint: disable=g-import-not-at-top
  kw = case.kwargs
  codec = LabelCodec(kw["radices"], kw["num_classes"], kw["permutation"])
  arrays = _topk_inputs(kw)

  def run():
    s, l = product_topk(arrays, kw["k"], codec)
    return np.asarray(s), np.asarray(l)

  def same(got, expected):
    (s, l), (scores, k) = got, expected
    b = scores.shape[0]
    if s.shape != (b, k) or l.shape != (b, k) or s.dtype != np.float32:
      return f"shapes {s.shape} {l.shape} {s.dtype}, expected {(b, k)}"
    for row in range(b):
      labels = l[row].tolist()
      if len(set(labels)) != k or not all(0 <= y < kw["num_classes"]
                                          for y in labels):
        return f"row {row}: labels {labels}"
      want = scores[row, labels]
      if not np.array_equal(s[row], want, equal_nan=True):
        return f"row {row}: scores {s[row]} for labels {labels}, expected {want}"
      if np.isnan(s[row]).any():
        continue
      above = set(np.flatnonzero(scores[row] > s[row, -1]).tolist())
      if not above <= set(labels):
        return f"row {row}: labels {sorted(above - set(labels))} missing"
      keys = list(zip((-s[row]).tolist(), labels))
      if keys != sorted(keys):
        return f"row {row}: order {keys}"
    return ""

  return judge(run, lambda: reference_topk_check(kw, arrays), same, {},
               (ValueError, TypeError))


# ---------------------------------------------------------------------------

TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy], Callable]] = {
    "xc": (xc_cases, check_xc),
    "xc_stream": (xc_stream_cases, check_xc_stream),
    "arff": (arff_cases, check_arff),
    "text": (text_cases, check_text),
    "pairs": (lambda: interaction_cases("pairs"), check_interactions),
    "sequences": (lambda: interaction_cases("sequences"), check_interactions),
    "names": (names_cases, check_names),
    "codec": (codec_cases, check_codec),
    "topk": (topk_cases, check_topk),
}
