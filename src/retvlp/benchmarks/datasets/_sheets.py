"""Read (and, for stand-ins, write) the `.xlsx` label sheets some publishers release, with the standard library.

openpyxl / xlrd are not dependencies of retvlp, and a label sheet needs none of what they do: an `.xlsx` file is
a zip of XML parts, and the cells the recipes read are plain strings and numbers. :func:`read_xlsx` returns one
sheet as rows of strings (empty cells as ""; numbers as Excel stores them, "3" or "0.5"; gaps in a row filled so
that column positions hold), :func:`write_xlsx` writes the same minimal workbook (tests write stand-ins with it).

Legacy binary `.xls` (BIFF) files are not read here: where a publisher ships them (MESSIDOR-1's per-base
`Annotation_BaseXY.xls`), :func:`read_xls_or_csv` uses `xlrd` when it is installed, else reads a `.csv` saved
next to the `.xls` with the same stem, and otherwise says how to make one.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


class SheetError(ValueError):
    """The file is not a workbook this reader understands, or lacks the sheet asked for."""


def _column_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - 64)
    return index - 1


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _all(node, name: str):
    """Descendants (and `node` itself) whose local tag name is `name`, whatever the namespace."""
    return (e for e in node.iter() if _local(e.tag) == name)


def _child(node, name: str):
    return next((e for e in node if _local(e.tag) == name), None)


def _attr(node, name: str) -> str | None:
    """An attribute by local name (`r:id` is namespaced differently in strict workbooks)."""
    return next((v for k, v in node.attrib.items() if _local(k) == name), None)


def _text(node) -> str:
    """The text of a shared / inline string item (plain `<t>` or rich-text runs `<r><t>`)."""
    return "".join(t.text or "" for t in _all(node, "t"))


def _format_number(raw: str) -> str:
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() else raw


def sheet_names(path: str | Path) -> list[str]:
    with _open(path) as book:
        return [name for name, _ in _sheets(book)]


def _open(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SheetError(f"{path} is not an .xlsx workbook ({exc}).") from exc


def _sheets(book: zipfile.ZipFile) -> list[tuple[str, str]]:
    """[(sheet name, part path inside the zip)] in workbook order."""
    try:
        workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
    except KeyError as exc:
        raise SheetError(f"{book.filename} lacks {exc.args[0]}: not an .xlsx workbook.") from exc
    targets = {r.get("Id"): r.get("Target", "") for r in _all(rels, "Relationship")}
    out = []
    for sheet in _all(workbook, "sheet"):
        target = targets.get(_attr(sheet, "id"), "")
        target = target.lstrip("/")
        part = target if target.startswith("xl/") else f"xl/{target}"
        out.append((sheet.get("name", ""), part))
    return out


def read_xlsx(path: str | Path, sheet: str | int = 0) -> list[list[str]]:
    """One sheet of an `.xlsx` workbook as rows of strings. `sheet`: a name or a 0-based position."""
    with _open(path) as book:
        sheets = _sheets(book)
        if isinstance(sheet, int):
            if not 0 <= sheet < len(sheets):
                raise SheetError(f"{path} has {len(sheets)} sheet(s); asked for sheet {sheet}.")
            part = sheets[sheet][1]
        else:
            found = [p for name, p in sheets if name.strip().lower() == sheet.strip().lower()]
            if not found:
                raise SheetError(f"{path} has no sheet {sheet!r} (sheets: {[n for n, _ in sheets]}).")
            part = found[0]
        shared: list[str] = []
        if "xl/sharedStrings.xml" in book.namelist():
            root = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = [_text(si) for si in _all(root, "si")]
        root = ElementTree.fromstring(book.read(part))
    rows: list[list[str]] = []
    for row in _all(root, "row"):
        row_number = int(row.get("r", len(rows) + 1))
        while len(rows) < row_number - 1:  # rows Excel left out because they are empty
            rows.append([])
        values: list[str] = []
        for cell in _all(row, "c"):
            match = _CELL_REF.fullmatch(cell.get("r", ""))
            col = _column_index(match.group(1)) if match else len(values)
            kind = cell.get("t", "n")
            if kind == "inlineStr":
                inline = _child(cell, "is")
                value = _text(inline) if inline is not None else ""
            else:
                v = _child(cell, "v")
                raw = v.text if v is not None and v.text is not None else ""
                if kind == "s" and raw:
                    value = shared[int(raw)]
                elif kind == "n" and raw:
                    value = _format_number(raw)
                else:  # str (formula result), b, e
                    value = raw
            while len(values) < col:
                values.append("")
            values.append(value)
        rows.append(values)
    return rows


def write_xlsx(path: str | Path, sheets: dict[str, Sequence[Sequence[object]]]) -> Path:
    """Write a minimal workbook {sheet name: rows}; strings as inline strings, ints / floats as numbers,
    None as an empty cell (tests use it to write stand-ins in a publisher's layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(sheets)
    content_types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        + "".join(
            f'<Override PartName="/xl/worksheets/sheet{i + 1}.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(len(names))
        )
        + "</Types>"
    )
    root_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
        'officeDocument" Target="xl/workbook.xml"/></Relationships>'
    )
    workbook = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets>'
        + "".join(
            f'<sheet name="{escape(n, {chr(34): "&quot;"})}" sheetId="{i + 1}" r:id="rId{i + 1}"/>'
            for i, n in enumerate(names)
        )
        + "</sheets></workbook>"
    )
    workbook_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        + "".join(
            f'<Relationship Id="rId{i + 1}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            f'relationships/worksheet" Target="worksheets/sheet{i + 1}.xml"/>'
            for i in range(len(names))
        )
        + "</Relationships>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr("[Content_Types].xml", content_types)
        book.writestr("_rels/.rels", root_rels)
        book.writestr("xl/workbook.xml", workbook)
        book.writestr("xl/_rels/workbook.xml.rels", workbook_rels)
        for i, name in enumerate(names):
            xml_rows = []
            for r, row in enumerate(sheets[name], start=1):
                cells = []
                for c, value in enumerate(row):
                    ref = f"{_column_letters(c)}{r}"
                    if value is None:
                        continue
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(str(value))}</t></is></c>')
                    else:
                        cells.append(f'<c r="{ref}"><v>{value}</v></c>')
                xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
            book.writestr(
                f"xl/worksheets/sheet{i + 1}.xml",
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
                + "".join(xml_rows)
                + "</sheetData></worksheet>",
            )
    return path


def read_csv(path: str | Path) -> list[list[str]]:
    """A CSV as rows of strings (UTF-8, a leading byte-order mark dropped)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [list(row) for row in csv.reader(handle)]


def read_xls_or_csv(path: str | Path) -> list[list[str]]:
    """A legacy `.xls` sheet (first sheet) through xlrd when installed, else the `.csv` with the same stem."""
    path = Path(path)
    csv_path = path.with_suffix(".csv")
    if path.exists():
        try:
            import xlrd  # type: ignore[import-not-found]
        except ImportError:
            xlrd = None
        if xlrd is not None:
            sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
            return [
                [_format_number(str(v)) if isinstance(v, float) else str(v) for v in sheet.row_values(r)]
                for r in range(sheet.nrows)
            ]
    if csv_path.exists():
        return read_csv(csv_path)
    raise SheetError(
        f"{path.name}: a legacy .xls sheet; retvlp reads it with xlrd (`pip install xlrd`), which is not "
        f"installed, or from {csv_path.name} next to it (save the sheet as CSV, UTF-8, same columns)."
    )
