"""Bytes → records: encoding detection, format detection and one reader per format.

Readers do not know about schemas. Each returns a :class:`RawTable` whose records carry either the
fields they found (a dict) or a structural problem (broken JSON line, unbalanced quote, wrong number
of cells) — never an exception for one bad row. Only a file that cannot be used at all raises
:class:`DataError`.
"""

from __future__ import annotations

import codecs
import csv
import datetime as _dt
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorastudio.data.columns import header_score, is_record
from lorastudio.data.types import DataError

TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "txt")
HEADER_SEARCH_LINES = 10  # a header may sit below a title or a note

# A huge quoted field (an unclosed quote swallowing the rest of the file) must be reported, not
# crash the csv module with "field larger than field limit".
csv.field_size_limit(2**31 - 1)


@dataclass
class RawRecord:
    row: int  # 1-based, as PRODUCT.md defines a row for this format
    raw: object  # what the user wrote: dict (keyed record), list of cells, or the text of the line
    fields: dict[str, object] | None  # column/key → value; None when ``problem`` is set
    problem: tuple[str, str, dict] | None = None  # (kind, i18n code, params) of a structural error
    cells_found: int | None = None  # a table row with fewer cells than the header has columns


@dataclass
class RawTable:
    format: str
    encoding: str | None
    records: list[RawRecord]
    columns: list[str] | None = None  # header of a table; None for keyed JSON records
    delimiter: str | None = None
    keyed: bool = False  # JSON-style records: each row has its own keys
    notes: list[str] = field(default_factory=list)
    sheet: str | None = None  # XLSX: the sheet read
    sheets: list[str] = field(default_factory=list)  # XLSX: all sheets, to suggest --sheet
    skipped: list[str] = field(default_factory=list)  # title lines above the header, reported
    header_row: int | None = None  # XLSX: the sheet row of the header (Excel's row of data row r: r + header_row)


# --- encodings --------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: its BOM starts with FF FE too
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII characters (newlines, quotes, commas) put NULs on one side."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = len(sample) // 2
    if odd_nuls > 0.2 * half and even_nuls < 0.05 * half:
        return "utf-16-le"
    if even_nuls > 0.2 * half and odd_nuls < 0.05 * half:
        return "utf-16-be"
    # Mostly-CJK text has few NULs (only its newlines and ASCII): decode both ways and keep the
    # one that reads as ordinary text rather than private-use or unassigned code points.
    best, best_score = None, 0.0
    for enc in ("utf-16-le", "utf-16-be"):
        try:
            text = data[: len(data) - len(data) % 2].decode(enc)
        except UnicodeDecodeError:
            continue
        sample = text[:4000]
        plain = len(_PLAIN.findall(sample)) / max(1, len(sample))
        if plain > best_score:
            best, best_score = enc, plain
    return best if best_score >= 0.9 else None


# Printable ASCII, whitespace, Latin-1, general punctuation, CJK, kana, hangul, full-width forms.
_PLAIN = re.compile(r"[\t\n\r\x20-\x7e\u00a0-\u024f\u2000-\u206f\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                    r"\uac00-\ud7af\uff00-\uffef]")


def _looks_binary(text: str) -> bool:
    if "\x00" in text:
        return True
    sample = text[:20000]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\x0c")
    return controls > max(2, len(sample) // 100)


def decode(data: bytes, name: str = "file") -> tuple[str, str]:
    """(text, encoding name). Tries BOMs, BOM-less UTF-16, UTF-8, then GBK/GB18030.

    Strict decoding only: a file is never silently decoded with replacement characters.
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(enc.replace("-sig", ""))
            except UnicodeDecodeError as exc:
                raise DataError.of("unreadable", file=name, error=f"invalid {enc} text at byte {exc.start}") from None
            if _looks_binary(text):
                raise DataError.of("binary", file=name)
            return text, enc
    if b"\x00" in data[:4096]:
        enc = _utf16_without_bom(data)
        if enc:
            try:
                text = data.decode(enc)
            except UnicodeDecodeError:
                text = None
            if text is not None and not _looks_binary(text):
                return text, enc
        raise DataError.of("binary", file=name)
    for enc in ("utf-8", "gbk", "gb18030"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if _looks_binary(text):
            raise DataError.of("binary", file=name)
        return text, enc
    raise DataError.of("undecodable", file=name)


# --- format detection ---------------------------------------------------------------------------

_QA_MARK = re.compile(
    r"^[ \t\u3000]*(?P<mark>问题|问|提问|Q|Question|答案|答|回答|A|Answer)[ \t\u3000]*[:：][ \t\u3000]*(?P<text>.*)$",
    re.IGNORECASE
)
_Q_MARKS = {"问题", "问", "提问", "q", "question"}


def read_table(path: str | Path, *, sheet: str | None = None) -> RawTable:
    """Read any supported file into records. Raises DataError when the file cannot be used."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise DataError.of("not_found", file=name)
    if path.is_dir():
        raise DataError.of("is_directory", "unreadable", file=name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError.of("unreadable", file=name, error=exc.strerror or str(exc)) from None
    return read_bytes(data, name=name, suffix=path.suffix.lower(), sheet=sheet)


def read_bytes(data: bytes, *, name: str = "file", suffix: str = "", sheet: str | None = None) -> RawTable:
    if not data.strip(b" \t\r\n\x00") or data in (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DataError.of("empty_file", file=name)
    if data.startswith(b"PK\x03\x04"):
        return _read_xlsx(data, name, sheet)
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise DataError.of("legacy_xls", "unreadable", file=name)
    if data.startswith(b"%PDF"):
        raise DataError.of("other_document", "unreadable", file=name, doc="PDF")
    if suffix in (".xlsx", ".xlsm"):
        raise DataError.of("not_xlsx", "unreadable", file=name, error="not a zip-based workbook")

    text, encoding = decode(data, name)
    if text.startswith("\ufeff"):  # a second BOM or one GBK/UTF-16 left in
        text = text[1:]
    if not text.strip():
        raise DataError.of("empty_file", file=name)
    head = text.lstrip()

    if head.startswith("["):
        return _read_json(text, name, encoding)
    if head.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return _read_jsonl(text, name, encoding)
        return _json_object_table(obj, text, name, encoding)
    if suffix in (".jsonl", ".json", ".ndjson"):
        # Not starting with { or [: still read line by line so every broken line is reported.
        return _read_jsonl(text, name, encoding)

    lines = text.splitlines()
    if suffix not in (".csv", ".tsv"):
        marks = [m.group("mark").lower() for ln in lines if (m := _QA_MARK.match(ln))]
        if any(m in _Q_MARKS for m in marks) and any(m not in _Q_MARKS for m in marks):
            return _read_qa_blocks(text, encoding)

    # A header row with known column names decides the delimiter (Excel in some locales writes ';').
    # It may sit below a title line or two ("云栈客服FAQ 2024版"), so look a few lines down.
    candidates = ["\t", ",", ";", "|"] if suffix == ".tsv" else [",", "\t", ";", "|"]
    best, best_score, best_line = None, 0, 0
    for lineno, line in enumerate(lines[:HEADER_SEARCH_LINES]):
        if not line.strip():
            continue
        for delim in candidates:
            cells = next(csv.reader([line], delimiter=delim), [])
            score = header_score(cells) if len(cells) >= 2 else 0
            if score > best_score:
                best, best_score, best_line = delim, score, lineno
        if best_score >= 2:
            break
    if best is not None and best_score >= 2:
        return _read_delimited(text, best, "tsv" if best == "\t" else "csv", encoding, header_line=best_line)
    if suffix in (".csv", ".tsv"):
        # The user said it is a table: read it as one so the refusal names the header we found.
        return _read_delimited(text, "\t" if suffix == ".tsv" else ",", suffix[1:], encoding)
    non_blank = [ln for ln in lines if ln.strip()]
    if non_blank and sum("\t" in ln for ln in non_blank) >= max(1, 0.8 * len(non_blank)):
        return _read_tab_pairs(text, encoding)
    raise DataError.of("unknown_format", file=name)


# --- JSON ---------------------------------------------------------------------------------------

def _read_json(text: str, name: str, encoding: str) -> RawTable:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError.of("malformed_json", file=name, line=exc.lineno, column=exc.colno, error=exc.msg) from None
    return _json_object_table(obj, text, name, encoding)


_LIST_KEYS = ("data", "rows", "records", "items", "examples", "samples", "train", "dataset", "qa", "faq")


def _json_object_table(obj: object, text: str, name: str, encoding: str) -> RawTable:
    if isinstance(obj, list):
        records = [_keyed_record(i, item) for i, item in enumerate(obj, start=1)]
        return RawTable("json", encoding, records, keyed=True)
    if isinstance(obj, dict):
        if is_record(obj):
            # One record: a one-line JSONL file or a single pretty-printed object.
            fmt = "jsonl" if text.strip().count("\n") == 0 else "json"
            return RawTable(fmt, encoding, [_keyed_record(1, obj)], keyed=True)
        lists = [k for k, v in obj.items() if isinstance(v, list) and any(isinstance(x, dict) for x in v)
                 and not _turn_like(v)]
        if len(lists) > 1:
            preferred = [k for k in lists if str(k).lower() in _LIST_KEYS]
            lists = preferred[:1] if len(preferred) == 1 else lists
        if len(lists) == 1:
            records = [_keyed_record(i, item) for i, item in enumerate(obj[lists[0]], start=1)]
            return RawTable("json", encoding, records, keyed=True, notes=[f"rows read from the '{lists[0]}' list"])
        if lists:
            raise DataError.of("unknown_columns", file=name, found=", ".join(f"'{k}'" for k in lists),
                               expected="@expected.list")
        # No list of rows inside: it is one (unrecognised) record; the schema step names what is missing.
        fmt = "jsonl" if text.strip().count("\n") == 0 else "json"
        return RawTable(fmt, encoding, [_keyed_record(1, obj)], keyed=True)
    raise DataError.of("unknown_format", file=name)


_TURN_KEYS = {"role", "from", "content", "value", "text", "input", "output", "system"}


def _turn_like(items: list) -> bool:
    """A list of chat turns (a record's misspelt 'messages'), not a list of rows."""
    dicts = [x for x in items if isinstance(x, dict)]
    return bool(dicts) and all(set(map(str, d)) <= _TURN_KEYS for d in dicts)


def _keyed_record(row: int, item: object, raw: object = None) -> RawRecord:
    if isinstance(item, dict):
        return RawRecord(row, item, dict(item))
    kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(item), "null" if item is None else type(item).__name__)
    return RawRecord(row, item if raw is None else raw, None, ("malformed_row", "malformed_row.not_object", {"type": kind}))


def _read_jsonl(text: str, name: str, encoding: str) -> RawTable:
    records: list[RawRecord] = []
    broken = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            broken += 1
            records.append(RawRecord(lineno, line, None, (
                "malformed_row", "malformed_row.json", {"error": f"{exc.msg} at column {exc.colno}"})))
            continue
        records.append(_keyed_record(lineno, item, raw=line))
    if broken and broken >= len(records) / 2:
        # Maybe pretty-printed objects one after another rather than one per line.
        stream = _json_stream(text)
        if stream is not None:
            return RawTable("jsonl", encoding, stream, keyed=True, notes=["objects spread over several lines"])
    if records and all(r.problem and r.problem[1] == "malformed_row.json" for r in records):
        first = records[0]
        raise DataError.of("malformed_json", file=name, line=first.row, column=1, error=first.problem[2]["error"])
    return RawTable("jsonl", encoding, records, keyed=True)


def _json_stream(text: str) -> list[RawRecord] | None:
    decoder = json.JSONDecoder()
    pos, out = 0, []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            return out or None
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        out.append(_keyed_record(text.count("\n", 0, pos) + 1, item, raw=text[pos:end]))
        pos = end


# --- CSV / TSV ----------------------------------------------------------------------------------

def _quote_problem(raw: str, delim: str) -> bool:
    """True when a quoted value is never closed or text follows a closing quote.

    Python's csv module (non-strict) silently accepts both and glues lines together; we want the
    row reported instead. A quote in the middle of an unquoted value is literal and fine.
    """
    in_quote = False
    at_start = True
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if in_quote:
            if ch == '"':
                if i + 1 < n and raw[i + 1] == '"':
                    i += 2
                    continue
                in_quote = False
                nxt = raw[i + 1] if i + 1 < n else ""
                if nxt not in ("", delim, "\r", "\n"):
                    return True
        elif ch == '"' and at_start:
            in_quote = True
        at_start = (not in_quote) and ch in (delim, "\r", "\n")
        i += 1
    return in_quote


def _read_delimited(text: str, delim: str, fmt: str, encoding: str, header_line: int = 0) -> RawTable:
    lines = list(io.StringIO(text, newline=""))
    skipped = [ln.strip() for ln in lines[:header_line] if ln.strip()]
    lines = lines[header_line:]
    reader = csv.reader(iter(lines), delimiter=delim)
    header: list[str] | None = None
    records: list[RawRecord] = []
    index = 0  # data-row number; blank lines count so row N stays "the N-th line after the header"
    consumed = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raw = "".join(lines[consumed:reader.line_num])
            if reader.line_num <= consumed:
                break
            consumed = reader.line_num
            if header is None:
                raise DataError(f"cannot read the header row: {exc}", "unreadable") from None
            index += 1
            records.append(RawRecord(index, raw, None, ("malformed_row", "malformed_row.csv", {"error": str(exc)})))
            continue
        raw = "".join(lines[consumed:reader.line_num])
        consumed = reader.line_num
        if header is None:
            if not any(c.strip() for c in cells):
                continue
            header = [c.strip() or f"column {i}" for i, c in enumerate(cells, start=1)]
            continue
        index += 1
        if not any(c.strip() for c in cells):
            continue  # a blank line (or only separators): no data to lose
        if '"' in raw and _quote_problem(raw, delim):  # the char-by-char scan only where quotes are
            records.append(RawRecord(index, cells, None, ("malformed_row", "malformed_row.quote", {})))
            continue
        records.append(_cells_record(index, cells, header, delim))
    if header is None:
        raise DataError("no header row", "empty_file")
    return RawTable(fmt, encoding, records, columns=header, delimiter=delim, skipped=skipped)


def _cells_record(row: int, cells: list[str], header: list[str], delim: str | None) -> RawRecord:
    n = len(header)
    if len(cells) > n and any(str(c).strip() for c in cells[n:]):
        code = "extra_columns" if delim else "extra_columns.sheet"
        return RawRecord(row, cells, None, (
            "extra_columns", code, {"found": len(cells), "expected": n, "delim": _delim_name(delim or ",")}))
    padded = list(cells[:n]) + [""] * (n - len(cells))
    # Whether a missing cell matters depends on which columns are used: the schema decides.
    return RawRecord(row, cells, dict(zip(header, padded, strict=True)), cells_found=len(cells) if len(cells) < n else None)


def _delim_name(delim: str) -> str:
    return {"\t": "tab", ",": ","}.get(delim, delim)


# --- TXT ----------------------------------------------------------------------------------------

def _read_tab_pairs(text: str, encoding: str) -> RawTable:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 2:
            records.append(RawRecord(lineno, line, None, ("malformed_row", "malformed_row.no_tab", {})))
        elif len(cells) > 2 and any(c.strip() for c in cells[2:]):
            records.append(RawRecord(lineno, line, None, (
                "extra_columns", "extra_columns", {"found": len(cells), "expected": 2, "delim": "tab"})))
        else:
            records.append(RawRecord(lineno, line, {"instruction": cells[0], "response": cells[1]}))
    return RawTable("txt", encoding, records, columns=["instruction", "response"], delimiter="\t")


def _read_qa_blocks(text: str, encoding: str) -> RawTable:
    """问：/答： or Q:/A: blocks. An answer runs until the next question marker (blank lines kept
    inside, trailing blank lines dropped). The row is the question's line number."""
    records: list[RawRecord] = []
    current: dict | None = None  # {"row", "q": [lines], "a": [lines] | None, "raw": [lines]}
    orphan: list[tuple[int, str]] = []

    def flush() -> None:
        nonlocal current
        if current is None:
            return
        q = "\n".join(current["q"]).strip("\n")
        a = "\n".join(current["a"]).strip("\n") if current["a"] is not None else ""
        records.append(RawRecord(current["row"], "\n".join(current["raw"]), {"instruction": q, "response": a}))
        current = None

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        m = _QA_MARK.match(line)
        if m and m.group("mark").lower() in _Q_MARKS:
            flush()
            current = {"row": lineno, "q": [m.group("text")], "a": None, "raw": [line]}
        elif m:
            if current is None:
                # An answer with no question: keep it as a row so the report names it.
                current = {"row": lineno, "q": [""], "a": [m.group("text")], "raw": [line]}
            elif current["a"] is None:
                current["a"] = [m.group("text")]
                current["raw"].append(line)
            else:
                flush()
                current = {"row": lineno, "q": [""], "a": [m.group("text")], "raw": [line]}
        elif current is not None:
            (current["a"] if current["a"] is not None else current["q"]).append(line)
            current["raw"].append(line)
        elif line.strip():
            orphan.append((lineno, line))
    flush()
    for lineno, line in orphan:
        records.append(RawRecord(lineno, line, None, ("malformed_row", "malformed_row.orphan_text", {})))
    records.sort(key=lambda r: r.row)
    return RawTable("txt", encoding, records, columns=["instruction", "response"])


# --- XLSX ---------------------------------------------------------------------------------------

def cell_text(value: object) -> str:
    """Spreadsheet cell → the text the user sees: numbers are text, 299.0 is "299"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, _dt.datetime):
        return value.date().isoformat() if value.time() == _dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    return str(value)


def _read_xlsx(data: bytes, name: str, sheet: str | None) -> RawTable:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
    except zipfile.BadZipFile as exc:
        raise DataError.of("not_xlsx", "unreadable", file=name, error=str(exc)) from None
    if "xl/workbook.xml" not in names:
        kind = "Word" if "word/document.xml" in names else "zip"
        if kind == "zip":
            raise DataError.of("not_xlsx", "unreadable", file=name, error="a zip archive without a workbook")
        raise DataError.of("other_document", "unreadable", file=name, doc=kind)
    from openpyxl import load_workbook

    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for damaged workbooks
        raise DataError.of("not_xlsx", "unreadable", file=name, error=str(exc) or type(exc).__name__) from None
    try:
        if sheet is not None:
            if sheet not in wb.sheetnames:
                raise DataError.of("unknown_sheet", file=name, sheet=sheet, sheets=", ".join(wb.sheetnames))
            ws = wb[sheet]
        else:
            ws = wb.worksheets[0]
        rows: list[tuple[int, list[str]]] = []
        for sheet_row, values in enumerate(ws.iter_rows(values_only=True), start=1):
            cells = [cell_text(v) for v in values]
            while cells and not cells[-1].strip():
                cells.pop()
            if any(c.strip() for c in cells):
                rows.append((sheet_row, cells))
    finally:
        wb.close()
    if not rows:
        raise DataError.of("empty_file", file=f"{name} (sheet '{ws.title}')")
    # The header is the first row naming known columns (a title row may sit above it), else row one.
    at = next((i for i, (_, cells) in enumerate(rows[:HEADER_SEARCH_LINES]) if header_score(cells) >= 2), 0)
    header_row, header_cells = rows[at]
    header = [c.strip() or f"column {i}" for i, c in enumerate(header_cells, start=1)]
    # A spreadsheet row has a cell under every column: trailing empty cells are empty values, not a row
    # cut short by a stray line break (as in a CSV), so the row is judged by its fields (e.g. empty answer).
    records = [_cells_record(r - header_row, cells + [""] * (len(header) - len(cells)), header, None)
               for r, cells in rows[at + 1:]]
    skipped = [" ".join(c for c in cells if c.strip()) for _, cells in rows[:at]]
    return RawTable("xlsx", None, records, columns=header, sheet=ws.title, sheets=list(wb.sheetnames),
                    skipped=skipped, header_row=header_row)
