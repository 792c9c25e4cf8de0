"""Errors raised by the data layer."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file is malformed or truncated.

    The message starts with ``<file>:<line>:`` whenever the problem can be pinned to a line, so
    editors and terminals can jump to it. ``file`` and ``line`` are also kept as attributes
    (``line`` is 1-based and ``None`` for whole-file problems such as a missing header or a
    broken zip archive).
    """

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None):
        self.problem = problem
        self.file = file
        self.line = line
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(where + problem)
