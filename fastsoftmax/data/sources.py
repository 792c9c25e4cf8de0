"""Where data files come from: a folder or a zip archive (a dataset zip or a wheel).

The loaders ask a :class:`FileSource` for a file by its base name (``u.data``,
``ml-100k.inter``) and get its lines back, so the same parser reads ``ml-100k/u.data`` from a
folder, from GroupLens's ``ml-100k.zip`` and ``recbole/dataset_example/ml-100k/ml-100k.inter``
from RecBole's wheel.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

from .errors import DataFormatError

# How deep below a folder to look for a data file: "root/u.data", "root/ml-100k/u.data" and
# "root/a/ml-100k/u.data", but never a whole tree walk.
_MAX_FOLDER_DEPTH = 2


class FileSource:
    """A folder or a zip archive that holds data files.

    path: a directory, or a ``.zip`` / ``.whl`` file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no such file or folder: {self.path}")
        self.is_zip = self.path.is_file()
        self._members: list[str] | None = None
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    self._members = archive.namelist()
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataFormatError(f"not a readable zip archive ({exc})", file=str(self.path)) from exc

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r})"

    def find(self, basename: str) -> str | None:
        """The shallowest file named ``basename``: a zip member name or a folder path; else None."""
        if self.is_zip:
            candidates = [m for m in self._members if m.rsplit("/", 1)[-1] == basename]
        else:
            candidates = []
            for depth in range(_MAX_FOLDER_DEPTH + 1):
                pattern = "/".join(["*"] * depth + [basename])
                candidates.extend(str(p) for p in self.path.glob(pattern) if p.is_file())
        if not candidates:
            return None
        return min(candidates, key=lambda name: (name.count("/"), name))

    def display_name(self, name: str) -> str:
        """How errors name a file: its path, or ``<archive>/<member>`` inside a zip."""
        return f"{self.path}/{name}" if self.is_zip else name

    def read_bytes(self, name: str) -> bytes:
        if not self.is_zip:
            return Path(name).read_bytes()
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            # A truncated or corrupted archive: the member's data or CRC does not check out.
            problem = f"cannot read from the zip archive ({exc})"
            raise DataFormatError(problem, file=self.display_name(name)) from exc

    def read_lines(self, name: str, encoding: str) -> list[str]:
        """The file's lines without line terminators.

        encoding: "latin-1" (GroupLens files) or "utf-8" (RecBole files; falls back to latin-1
        for bytes that are not UTF-8, as a re-encoded copy may be).
        """
        data = self.read_bytes(name)
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        # NB: not str.splitlines(): latin-1 decoding turns byte 0x85 into U+0085, which
        # splitlines() would treat as a line break inside a title.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line[:-1] if line.endswith("\r") else line for line in lines]


def _known_dirs() -> list[Path]:
    return [
        Path.cwd(),
        Path.home() / ".cache" / "fastsoftmax",
        Path(tempfile.gettempdir()) / "recbole_wheel",
        Path(tempfile.gettempdir()),
    ]


def installed_recbole_ml100k_dir() -> Path | None:
    """``recbole/dataset_example/ml-100k`` of an installed recbole package, if any.

    NB: find_spec locates a top-level package without importing it, so this works even when
    recbole's own dependencies are not installed.
    """
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    return None


def find_movielens_100k(extra_dirs: list[str | os.PathLike] = ()) -> Path | None:
    """A folder or zip holding MovieLens-100K, found without the network, or None.

    Looks, in order, at: the ``FASTSOFTMAX_ML100K`` environment variable; an installed recbole
    package; then in ``extra_dirs``, the working directory, ``~/.cache/fastsoftmax``,
    ``$TMPDIR/recbole_wheel`` and ``$TMPDIR`` for a ``recbole-*.whl``, ``ml-100k.zip`` or
    ``ml-100k/`` folder.
    """
    env = os.environ.get("FASTSOFTMAX_ML100K")
    if env and Path(env).exists():
        return Path(env)
    installed = installed_recbole_ml100k_dir()
    if installed is not None:
        return installed
    for folder in [Path(d) for d in extra_dirs] + _known_dirs():
        if not folder.is_dir():
            continue
        wheels = sorted(folder.glob("recbole-*.whl"), reverse=True)  # newest version first
        if wheels:
            return wheels[0]
        if (folder / "ml-100k.zip").is_file():
            return folder / "ml-100k.zip"
        if (folder / "ml-100k" / "u.data").is_file():
            return folder / "ml-100k"
    return None
