"""MovieLens-100K and MovieLens-1M loaders with user and item side features.

Formats read:

* GroupLens ML-100K: ``u.data`` (tab: user item rating timestamp), ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release date|video release
  date|IMDb URL|`` + 19 genre flags); latin-1. From a folder or the official ``ml-100k.zip``.
* RecBole atomic ML-100K: ``ml-100k.inter``, ``ml-100k.user``, ``ml-100k.item``; tab-separated
  with a typed header (``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``);
  columns are found by name, so their order does not matter. From a folder, an installed
  recbole package or the recbole wheel file itself.
* GroupLens ML-1M: ``ratings.dat``, ``users.dat``, ``movies.dat``; ``::``-separated, latin-1.

Every loader either returns a complete dataset or raises: a malformed or truncated line raises
:class:`DataFormatError` naming the file and the line, and an interaction whose user or item is
missing from the feature files is an error too (a truncated feature file shows up that way).
Users and items are the rows of the user and item files (the catalogue), indexed densely in
ascending raw-id order.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import features as F
from .dataset import Interactions, ItemFeatures, RecDataset, UserFeatures
from .errors import DataFormatError
from .sources import FileSource, find_movielens_100k

__all__ = ["load_movielens_100k", "load_movielens_1m"]


# ------------------------------------------------------------------------------------ parsing
class _File:
    """One text file of a source, read as split lines with 1-based line numbers for errors."""

    def __init__(self, source: FileSource, basename: str, encoding: str):
        name = source.find(basename)
        if name is None:
            raise FileNotFoundError(f"{basename} not found in {source.path}")
        self.display = source.display_name(name)
        self.lines = source.read_lines(name, encoding)

    def error(self, line_no: int | None, problem: str) -> DataFormatError:
        return DataFormatError(problem, file=self.display, line=line_no)

    def table(self, sep: str, n_fields: int, first_line: int = 1) -> tuple[list[int], list[list[str]]]:
        """(line numbers, fields per line) of every non-blank line from ``first_line`` on."""
        numbered = [
            (line_no, line)
            for line_no, line in enumerate(self.lines[first_line - 1 :], start=first_line)
            if line.strip()
        ]
        line_numbers = [line_no for line_no, _ in numbered]
        rows = [line.split(sep) for _, line in numbered]
        for line_no, fields in zip(line_numbers, rows):
            if len(fields) != n_fields:
                line = self.lines[line_no - 1]
                raise self.error(
                    line_no,
                    f"expected {n_fields} fields separated by {sep!r}, found {len(fields)} "
                    f"(truncated or malformed line: {line[:80]!r})",
                )
        return line_numbers, rows

    def rows(self, sep: str, n_fields: int, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, fields) for every non-blank line from ``first_line`` on."""
        yield from zip(*self.table(sep, n_fields, first_line))

    def integer_table(self, sep: str, n_fields: int, first_line: int = 1) -> np.ndarray | None:
        """All fields as [n_lines, n_fields] int64 through numpy's C parser, or None.

        A fast path for the big interaction files (ML-1M: ~1 s instead of ~5 s). It returns None
        -- and the caller takes the line-by-line path, which names the bad line -- unless every
        line is non-blank with exactly ``n_fields`` fields, all of them integers.
        """
        body = self.lines[first_line - 1 :]
        if not body or any(line.count(sep) != n_fields - 1 for line in body):
            return None
        text = "\n".join(body)
        # NB: numpy splits on any whitespace; with no other spaces or tabs in the text, its
        # tokens are exactly the fields, and an empty field shows up as a short count below.
        # Signs go to the slow path too: numpy reads a lone "-" as 0.
        if any(c in text for c in " +-") or (sep != "\t" and "\t" in text):
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy warns, not raises, on unparseable text
                flat = np.fromstring(text.replace(sep, " "), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
        # numpy saturates on overflow instead of failing.
        if flat.size != len(body) * n_fields or flat.max() == np.iinfo(np.int64).max:
            return None
        return flat.reshape(len(body), n_fields)

    def column(self, line_numbers: list[int], texts, convert: Callable, what: str, dtype) -> np.ndarray:
        """Convert one column of a big file at list-comprehension speed; on failure, walk it
        line by line to report the first bad line."""
        try:
            return np.array([convert(text) for text in texts], dtype=dtype)
        except (ValueError, KeyError, OverflowError):
            for line_no, text in zip(line_numbers, texts):
                self.parse(line_no, text, lambda t: np.array(convert(t), dtype=dtype), what)
            raise

    def parse(self, line_no: int, text: str, convert: Callable, what: str):
        try:
            return convert(text.strip())
        except (ValueError, KeyError, OverflowError):
            raise self.error(line_no, f"bad {what}: {text!r}") from None


def _int_or_float(text: str) -> int:
    """RecBole types timestamps as float; accept ``881250949`` and ``881250949.0``."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not np.isfinite(value):
            raise
        return int(value)


def _gender(text: str) -> int:
    return F.GENDERS.index(text.upper())


@dataclass
class _Table:
    """Rows of an entity file in file order, before dense re-indexing."""

    file: _File
    raw_ids: list[int]
    line_numbers: list[int]
    columns: dict[str, list]


@dataclass
class _RawInteractions:
    """An interaction file's columns with raw ids, before dense re-indexing."""

    file: _File
    users: np.ndarray  # [N] int64 raw ids
    items: np.ndarray  # [N] int64 raw ids
    ratings: np.ndarray  # [N] float32
    timestamps: np.ndarray  # [N] int64
    line_numbers: list[int]


def _read_interactions(
    file: _File,
    sep: str,
    n_fields: int,
    first_line: int,
    columns: dict[str, tuple[int, str]],
    timestamp_convert: Callable[[str], int] = int,
) -> _RawInteractions:
    """Parse an interaction file; ``columns`` maps user/item/rating/timestamp to (field index,
    name used in error messages)."""
    fast = file.integer_table(sep, n_fields, first_line)
    if fast is not None:
        return _RawInteractions(
            file,
            users=fast[:, columns["user"][0]].copy(),
            items=fast[:, columns["item"][0]].copy(),
            ratings=fast[:, columns["rating"][0]].astype(np.float32),
            timestamps=fast[:, columns["timestamp"][0]].copy(),
            line_numbers=list(range(first_line, first_line + len(fast))),
        )
    line_numbers, rows = file.table(sep, n_fields, first_line)
    if not rows:
        raise file.error(None, "no interactions in the file")
    fields = list(zip(*rows))

    def col(name: str, convert, dtype):
        index, label = columns[name]
        return file.column(line_numbers, fields[index], convert, label, dtype)

    ratings = col("rating", float, np.float64)
    bad = np.flatnonzero(~np.isfinite(ratings))
    if bad.size:
        index, label = columns["rating"]
        raise file.error(line_numbers[bad[0]], f"bad {label}: {fields[index][bad[0]]!r}")
    return _RawInteractions(
        file,
        users=col("user", int, np.int64),
        items=col("item", int, np.int64),
        ratings=ratings.astype(np.float32),
        timestamps=col("timestamp", timestamp_convert, np.int64),
        line_numbers=line_numbers,
    )


def _empty_table(file: _File, *names: str) -> _Table:
    return _Table(file, [], [], {name: [] for name in names})


# ------------------------------------------------------------------------------------ assembly
def _sort_entities(table: _Table, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw ids ascending [n] int64, file-order positions in that order [n] int64)."""
    if not table.raw_ids:
        raise table.file.error(None, f"no {what}s in the file")
    raw = np.asarray(table.raw_ids, dtype=np.int64)
    order = np.argsort(raw, kind="stable")
    raw_sorted = raw[order]
    duplicate = np.flatnonzero(raw_sorted[1:] == raw_sorted[:-1])
    if duplicate.size:
        later = order[duplicate[0] + 1]
        raise table.file.error(table.line_numbers[later], f"duplicate {what} id {raw[later]}")
    return raw_sorted, order


def _dense_index(
    raw_sorted: np.ndarray, raw: np.ndarray, inter: _RawInteractions, what: str, entity_file: _File
) -> np.ndarray:
    """Raw ids [N] -> dense indices [N]; an id missing from the entity file is an error at its line."""
    pos = np.searchsorted(raw_sorted, raw)
    pos_clipped = np.minimum(pos, len(raw_sorted) - 1)
    missing = np.flatnonzero((pos >= len(raw_sorted)) | (raw_sorted[pos_clipped] != raw))
    if missing.size:
        first = missing[0]
        raise inter.file.error(
            inter.line_numbers[first],
            f"{what} id {raw[first]} is not in {entity_file.display} (truncated file?)",
        )
    return pos.astype(np.int64)


def _assemble(
    name: str,
    source: str,
    inter: _RawInteractions,
    users: _Table,
    items: _Table,
    make_user_features: Callable[[dict[str, np.ndarray]], UserFeatures],
    make_item_features: Callable[[dict[str, np.ndarray]], ItemFeatures],
) -> RecDataset:
    user_raw, user_order = _sort_entities(users, "user")
    item_raw, item_order = _sort_entities(items, "item")
    user_cols = {k: _take(v, user_order) for k, v in users.columns.items()}
    item_cols = {k: _take(v, item_order) for k, v in items.columns.items()}
    interactions = Interactions(
        user=_dense_index(user_raw, inter.users, inter, "user", users.file),
        item=_dense_index(item_raw, inter.items, inter, "item", items.file),
        rating=inter.ratings,
        timestamp=inter.timestamps,
    )
    return RecDataset(
        name=name,
        interactions=interactions,
        user_raw_ids=user_raw,
        item_raw_ids=item_raw,
        user_features=make_user_features(user_cols),
        item_features=make_item_features(item_cols),
        source=source,
    )


def _take(values: list, order: np.ndarray):
    """Reorder one column: numbers -> numpy array; strings and genre lists -> tuple."""
    if values and isinstance(values[0], (str, list)):
        return tuple(values[i] for i in order)
    return np.asarray(values)[order]


def _user_features(occupation_vocab: tuple[str, ...]) -> Callable[[dict], UserFeatures]:
    def make(cols: dict) -> UserFeatures:
        age = cols["age"].astype(np.int64)
        return UserFeatures(
            age=age,
            age_bucket=F.bucket_ages(age),
            gender=cols["gender"].astype(np.int64),
            occupation=cols["occupation"].astype(np.int64),
            zip_prefix=cols["zip_prefix"].astype(np.int64),
            age_vocab=F.AGE_BUCKETS,
            gender_vocab=F.GENDERS,
            occupation_vocab=occupation_vocab,
            zip_prefix_vocab=F.ZIP_PREFIXES,
        )

    return make


def _item_features(cols: dict) -> ItemFeatures:
    n_items = len(cols["year"])
    genres = np.zeros((n_items, len(F.GENRES)), dtype=np.float32)
    for row, genre_codes in enumerate(cols["genres"]):
        genres[row, list(genre_codes)] = 1.0
    year = cols["year"].astype(np.int64)
    return ItemFeatures(
        genres=genres,
        release_year=year,
        year_bucket=F.bucket_years(year),
        titles=cols["title"],
        genre_vocab=F.GENRES,
        year_bucket_vocab=F.YEAR_BUCKETS,
    )


# ------------------------------------------------------------------------------------ ML-100K
def _read_grouplens_100k(source: FileSource) -> RecDataset:
    data = _File(source, "u.data", "latin-1")
    inter = _read_interactions(
        data, "\t", 4, 1,
        {"user": (0, "user id"), "item": (1, "item id"), "rating": (2, "rating"), "timestamp": (3, "timestamp")},
    )  # fmt: skip

    user_file = _File(source, "u.user", "latin-1")
    users = _empty_table(user_file, "age", "gender", "occupation", "zip_prefix")
    for line_no, (uid, age, gender, occupation, zip_code) in user_file.rows("|", 5):
        users.raw_ids.append(user_file.parse(line_no, uid, int, "user id"))
        users.line_numbers.append(line_no)
        users.columns["age"].append(user_file.parse(line_no, age, int, "age"))
        users.columns["gender"].append(user_file.parse(line_no, gender, _gender, "gender"))
        users.columns["occupation"].append(
            user_file.parse(line_no, occupation, F.ML100K_OCCUPATIONS.index, "occupation")
        )
        users.columns["zip_prefix"].append(F.zip_prefix_code(zip_code))

    item_file = _File(source, "u.item", "latin-1")
    items = _empty_table(item_file, "title", "year", "genres")
    n_flags = len(F.GENRES)
    for line_no, fields in item_file.rows("|", 5 + n_flags):
        items.raw_ids.append(item_file.parse(line_no, fields[0], int, "item id"))
        items.line_numbers.append(line_no)
        items.columns["title"].append(fields[1])
        year = item_file.parse(line_no, fields[2], _grouplens_release_year, "release date")
        items.columns["year"].append(year)
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise item_file.error(line_no, f"genre flags must be 0 or 1, got {flags}")
        items.columns["genres"].append([g for g, flag in enumerate(flags) if flag == "1"])

    return _assemble(
        "ml-100k", f"{source.path} (GroupLens)", inter, users, items,
        _user_features(F.ML100K_OCCUPATIONS), _item_features,
    )  # fmt: skip


def _grouplens_release_year(text: str) -> int:
    """``01-Jan-1995`` -> 1995; an empty date (one item in ML-100K) -> -1."""
    if not text:
        return -1
    return int(text.rsplit("-", 1)[-1])


class _AtomicFile(_File):
    """A RecBole atomic file: a typed header (``name:type``) then tab-separated rows."""

    def __init__(self, source: FileSource, basename: str, required: tuple[str, ...]):
        super().__init__(source, basename, "utf-8")
        if not self.lines:
            raise self.error(None, "empty file (no header)")
        header = self.lines[0].split("\t")
        self.n_fields = len(header)
        names = [field.split(":", 1)[0].strip() for field in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise self.error(1, f"header lacks column(s) {missing}; header is {self.lines[0]!r}")
        self.column_index = {name: names.index(name) for name in required}

    def records(self) -> Iterator[tuple[int, dict[str, str]]]:
        for line_no, fields in self.rows("\t", self.n_fields, first_line=2):
            yield line_no, {name: fields[col] for name, col in self.column_index.items()}


def _recbole_year(text: str) -> int:
    # The real ml-100k.item holds "unkonwn" and "V" in release_year; both mean unknown.
    return int(text) if text.isdigit() else -1


def _recbole_genres(text: str) -> list[int]:
    return [F.GENRE_INDEX[name] for name in text.split()]


def _read_recbole_100k(source: FileSource) -> RecDataset:
    inter_file = _AtomicFile(source, "ml-100k.inter", ("user_id", "item_id", "rating", "timestamp"))
    column = inter_file.column_index
    inter = _read_interactions(
        inter_file, "\t", inter_file.n_fields, 2,
        {"user": (column["user_id"], "user_id"), "item": (column["item_id"], "item_id"),
         "rating": (column["rating"], "rating"), "timestamp": (column["timestamp"], "timestamp")},
        timestamp_convert=_int_or_float,
    )  # fmt: skip

    user_file = _AtomicFile(source, "ml-100k.user", ("user_id", "age", "gender", "occupation", "zip_code"))
    users = _empty_table(user_file, "age", "gender", "occupation", "zip_prefix")
    for line_no, rec in user_file.records():
        users.raw_ids.append(user_file.parse(line_no, rec["user_id"], int, "user_id"))
        users.line_numbers.append(line_no)
        users.columns["age"].append(user_file.parse(line_no, rec["age"], int, "age"))
        users.columns["gender"].append(user_file.parse(line_no, rec["gender"], _gender, "gender"))
        users.columns["occupation"].append(
            user_file.parse(line_no, rec["occupation"], F.ML100K_OCCUPATIONS.index, "occupation")
        )
        users.columns["zip_prefix"].append(F.zip_prefix_code(rec["zip_code"]))

    item_file = _AtomicFile(source, "ml-100k.item", ("item_id", "movie_title", "release_year", "class"))
    items = _empty_table(item_file, "title", "year", "genres")
    for line_no, rec in item_file.records():
        items.raw_ids.append(item_file.parse(line_no, rec["item_id"], int, "item_id"))
        items.line_numbers.append(line_no)
        items.columns["title"].append(rec["movie_title"])
        items.columns["year"].append(_recbole_year(rec["release_year"].strip()))
        genres = item_file.parse(line_no, rec["class"], _recbole_genres, "genre (class)")
        items.columns["genres"].append(genres)

    return _assemble(
        "ml-100k", f"{source.path} (RecBole atomic)", inter, users, items,
        _user_features(F.ML100K_OCCUPATIONS), _item_features,
    )  # fmt: skip


def load_movielens_100k(source: str | os.PathLike | None = None, *, format: str = "auto") -> RecDataset:
    """Load MovieLens-100K with user and item features.

    source: a folder or zip (``ml-100k.zip``, a recbole wheel) holding either the GroupLens files
        (``u.data``, ``u.user``, ``u.item``) or RecBole's atomic files (``ml-100k.inter``,
        ``.user``, ``.item``), possibly one or two folders down. None: search this machine
        (see :func:`find_movielens_100k`).
    format: "auto" (GroupLens files win when both are present), "grouplens" or "recbole".

    The full dataset has 943 users, 1682 items and 100000 interactions.
    Raises DataFormatError for a malformed or truncated file, FileNotFoundError when the files
    are missing.
    """
    if source is None:
        source = find_movielens_100k()
        if source is None:
            raise FileNotFoundError(
                "MovieLens-100K not found: pass a folder or zip with u.data/u.user/u.item (GroupLens) "
                "or ml-100k.inter/.user/.item (RecBole), set FASTSOFTMAX_ML100K, or place "
                "recbole-1.2.1-py3-none-any.whl in ~/.cache/fastsoftmax"
            )
    files = FileSource(source)
    if format not in ("auto", "grouplens", "recbole"):
        raise ValueError(f"format must be 'auto', 'grouplens' or 'recbole', got {format!r}")
    if format == "grouplens" or (format == "auto" and files.find("u.data") is not None):
        return _read_grouplens_100k(files)
    if format == "recbole" or files.find("ml-100k.inter") is not None:
        return _read_recbole_100k(files)
    raise FileNotFoundError(f"neither u.data (GroupLens) nor ml-100k.inter (RecBole) found in {files.path}")


# ------------------------------------------------------------------------------------ ML-1M
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _ml1m_genres(text: str) -> list[int]:
    return [F.GENRE_INDEX[name] for name in text.split("|")] if text else []


def _ml1m_occupation(text: str) -> int:
    code = int(text)
    if not 0 <= code < len(F.ML1M_OCCUPATIONS):
        raise ValueError(text)
    return code


def load_movielens_1m(source: str | os.PathLike) -> RecDataset:
    """Load MovieLens-1M (``ratings.dat``, ``users.dat``, ``movies.dat``) from a folder or zip.

    Occupation codes keep ML-1M's own 21-entry table (``features.ML1M_OCCUPATIONS``); ages,
    genders, zip prefixes, genres and release-year buckets share ML-100K's vocabularies. The
    release year is read from the title's trailing ``(YYYY)``.
    """
    files = FileSource(source)
    ratings = _File(files, "ratings.dat", "latin-1")
    inter = _read_interactions(
        ratings, "::", 4, 1,
        {"user": (0, "UserID"), "item": (1, "MovieID"), "rating": (2, "Rating"), "timestamp": (3, "Timestamp")},
    )  # fmt: skip

    user_file = _File(files, "users.dat", "latin-1")
    users = _empty_table(user_file, "age", "gender", "occupation", "zip_prefix")
    for line_no, (uid, gender, age, occupation, zip_code) in user_file.rows("::", 5):
        users.raw_ids.append(user_file.parse(line_no, uid, int, "UserID"))
        users.line_numbers.append(line_no)
        users.columns["gender"].append(user_file.parse(line_no, gender, _gender, "Gender"))
        users.columns["age"].append(user_file.parse(line_no, age, int, "Age"))
        occupation_code = user_file.parse(line_no, occupation, _ml1m_occupation, "Occupation")
        users.columns["occupation"].append(occupation_code)
        users.columns["zip_prefix"].append(F.zip_prefix_code(zip_code))

    movie_file = _File(files, "movies.dat", "latin-1")
    items = _empty_table(movie_file, "title", "year", "genres")
    for line_no, (mid, title, genres) in movie_file.rows("::", 3):
        items.raw_ids.append(movie_file.parse(line_no, mid, int, "MovieID"))
        items.line_numbers.append(line_no)
        items.columns["title"].append(title)
        match = _TITLE_YEAR.search(title)
        items.columns["year"].append(int(match.group(1)) if match else -1)
        items.columns["genres"].append(movie_file.parse(line_no, genres, _ml1m_genres, "Genres"))

    return _assemble(
        "ml-1m", f"{files.path} (GroupLens ML-1M)", inter, users, items,
        _user_features(F.ML1M_OCCUPATIONS), _item_features,
    )  # fmt: skip
