"""The one place that reads the files a user edits: sweep and profile YAML (configs/), and the paper's tables
(data/reference/*.csv) that a sweep's `table:` entry expands. A file that cannot be used raises UserFileError
with one line: the file, line:column where known, what is wrong and how to fix it, before any work starts.

    spec = load_yaml(path, SWEEP_KEYS, "a sweep file")
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

# top-level keys of each YAML file a user edits, with the type each value must have
SWEEP_KEYS = {"description": str, "defaults": dict, "evaluation": dict, "runs": list}
PROFILE_KEYS = {
    "description": str,
    "sweeps": list,
    "sweeps_from": str,
    "workers": (int, str),
    "notebooks": dict,
    "decide": dict,
}
TYPE_NAMES = {dict: "mapping", list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}


class UserFileError(ValueError):
    """A user-edited file that cannot be used (one line: file, where, what is wrong, the fix)."""


def _type_name(value) -> str:
    """'a list', 'an integer', ...: what a YAML value is, for error messages."""
    name = "empty value" if value is None else TYPE_NAMES.get(type(value), type(value).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _where(text: str, offset: int) -> str:
    """line:column (1-based) of a character offset into `text`."""
    line = text.count("\n", 0, offset) + 1
    return f"{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of `path`; missing, unreadable, binary, non-UTF-8 and empty files are UserFileErrors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such file; check the path of {what}") from None
    except IsADirectoryError:
        raise UserFileError(f"{path}: is a folder, not {what}; give the file inside it") from None
    except OSError as e:
        raise UserFileError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except UnicodeDecodeError as e:
        where = _where(data[: e.start].decode("utf-8", "replace"), e.start)
        raise UserFileError(
            f"{path}:{where}: byte 0x{data[e.start]:02x} is not UTF-8 text; {what} must be saved as UTF-8 text"
        ) from None
    if "\0" in text:
        raise UserFileError(f"{path}:{_where(text, text.index(chr(0)))}: holds binary data (a NUL byte), not {what}")
    if not text.strip():
        raise UserFileError(f"{path}: is empty; write {what} into it (see the ones in configs/ for the format)")
    return text


def load_yaml(path: str | Path, keys: dict[str, type | tuple[type, ...]], what: str) -> dict:
    """A YAML mapping whose top-level keys are among `keys`, each value of its type (or empty)."""
    text = read_text(path, what)
    try:
        spec = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        opened = (
            f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
            if e.context and e.context_mark and e.context_mark is not mark
            else ""
        )
        raise UserFileError(
            f"{path}{where}: YAML syntax error: {e.problem}{opened}; fix the brackets, quotes or indentation there"
        ) from None
    except yaml.YAMLError as e:
        raise UserFileError(f"{path}: not YAML ({' '.join(str(e).split())})") from None
    if not isinstance(spec, dict):
        raise UserFileError(
            f"{path}: the top level must be a mapping of {', '.join(keys)}, but the file holds "
            f"{_type_name(spec)}; start each top-level line with one of those keys and a colon"
        )
    if unknown := sorted(set(map(str, spec)) - set(keys)):
        raise UserFileError(f"{path}: unknown top-level keys {unknown} (expected {', '.join(keys)})")
    for key, value in spec.items():
        if value is not None and not isinstance(value, keys[key]):
            kinds = keys[key] if isinstance(keys[key], tuple) else (keys[key],)
            raise UserFileError(
                f"{path}: `{key}` must be a {' or '.join(TYPE_NAMES[k] for k in kinds)}, "
                f"got {_type_name(value)} ({value!r})"
            )
    return spec


def load_csv(
    path: str | Path, what: str, columns: Sequence[str] = (), numeric: Sequence[str] = (), dtype: dict | None = None
) -> pd.DataFrame:
    """A CSV table with a header row holding `columns`, the `numeric` ones numbers (empty cells allowed)."""
    text = read_text(path, what)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        line = re.search(r"line (\d+)", str(e))
        where = f":{line.group(1)}" if line else ""
        raise UserFileError(
            f"{path}{where}: not a CSV table ({' '.join(str(e).split())}); each row needs as many "
            f"comma-separated cells as the header"
        ) from None
    if missing := [c for c in columns if c not in df.columns]:
        raise UserFileError(f"{path}: lacks the columns {missing} of {what}; its header row has {list(df.columns)[:8]}")
    for c in numeric:
        bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise UserFileError(f"{path}:{row + 2}: column {c} must hold numbers, got {df[c].iloc[row]!r}")
    return df
