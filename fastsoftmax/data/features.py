"""Vocabularies and bucketing for MovieLens side features.

Both MovieLens-100K and MovieLens-1M map onto the same vocabularies, so a model trained on one
reads the other's features with the same embedding tables. Every categorical feature is an int64
code indexing into its vocabulary tuple.
"""

from __future__ import annotations

import numpy as np

# The 19 MovieLens-100K genres in the order of u.item's flag columns. MovieLens-1M uses the same
# names minus "unknown", so it fits into this vocabulary unchanged.
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GENRE_INDEX = {name: i for i, name in enumerate(GENRES)}

# MovieLens-1M's own age groups (users.dat stores the lower bound of the group). ML-100K stores
# raw ages; bucketing them with the same bounds gives both datasets one vocabulary.
AGE_BUCKET_LOWER_BOUNDS = np.array([18, 25, 35, 45, 50, 56], dtype=np.int64)
AGE_BUCKETS: tuple[str, ...] = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")

GENDERS: tuple[str, ...] = ("F", "M")

# MovieLens-100K occupations (u.occupation), alphabetical as GroupLens lists them.
ML100K_OCCUPATIONS: tuple[str, ...] = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip

# MovieLens-1M occupation codes 0..20 (users.dat stores the code), from the ML-1M README.
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip

# First digit of a US zip code = its national area (0 = New England ... 9 = West Coast); two
# digits would leave ~100 values for ~1000 users, mostly seen once. Non-US codes (ML-100K holds
# some Canadian postcodes) share "other".
ZIP_PREFIXES: tuple[str, ...] = tuple("0123456789") + ("other",)

# Release year in decades; code 0 is "unknown" (missing or unparseable date).
YEAR_BUCKET_EDGES = np.arange(1930, 2001, 10, dtype=np.int64)  # 1930, 1940, ..., 2000
YEAR_BUCKETS: tuple[str, ...] = (
    ("unknown", "<1930") + tuple(f"{y}s" for y in range(1930, 2000, 10)) + ("2000+",)
)


def bucket_ages(ages: np.ndarray) -> np.ndarray:
    """[n] int ages -> [n] int64 codes into AGE_BUCKETS."""
    return np.searchsorted(AGE_BUCKET_LOWER_BOUNDS, np.asarray(ages, dtype=np.int64), side="right")


def bucket_years(years: np.ndarray) -> np.ndarray:
    """[n] int years (-1 = unknown) -> [n] int64 codes into YEAR_BUCKETS."""
    years = np.asarray(years, dtype=np.int64)
    codes = 1 + np.searchsorted(YEAR_BUCKET_EDGES, years, side="right")
    return np.where(years < 0, 0, codes).astype(np.int64)


def zip_prefix_code(zip_code: str) -> int:
    """A zip code string -> code into ZIP_PREFIXES."""
    zip_code = zip_code.strip()
    if zip_code[:1].isdigit():
        return int(zip_code[0])
    return len(ZIP_PREFIXES) - 1
