"""Tests for fastsoftmax.data: loaders, splits, cold-start split, synthetic data, CSR sets."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsoftmax.data import (
    DataFormatError,
    RecDataset,
    UserItemCSR,
    find_movielens_100k,
    load_movielens_100k,
    load_movielens_1m,
    make_clustered_dataset,
    ratio_split_sizes,
    split_cold_start_users,
    split_leave_last_out,
    split_random_ratio,
)
from fastsoftmax.data.dataset import Interactions
from fastsoftmax.data.features import AGE_BUCKETS, GENRES, ML100K_OCCUPATIONS, YEAR_BUCKETS, ZIP_PREFIXES

# ----------------------------------------------------------------------------------- fixtures
# A tiny MovieLens-100K: raw ids deliberately sparse and out of order, so dense re-indexing
# is exercised. user: (id, age, gender, occupation, zip)
USERS = [
    (7, 24, "M", "technician", "85711"),
    (2, 53, "F", "other", "94043"),
    (30, 17, "M", "student", "T8H1N"),  # Canadian postcode -> zip prefix "other"
]
# item: (id, title, release date, genre names)
ITEMS = [
    (10, "Toy Story (1995)", "01-Jan-1995", ("Animation", "Children's", "Comedy")),
    (3, "Casablanca (1942)", "01-Jan-1942", ("Drama", "Romance", "War")),
    (5, "unknown", "", ("unknown",)),
    (40, "Café Lumière (2003)", "01-Jan-2003", ("Drama",)),  # latin-1 byte in the title
]
# interaction: (user, item, rating, timestamp)
RATINGS = [
    (7, 10, 5, 100),
    (7, 3, 3, 300),
    (7, 5, 1, 200),
    (2, 10, 4, 50),
    (2, 40, 2, 60),
    (30, 3, 5, 10),
    (30, 10, 4, 20),
    (30, 5, 3, 30),
    (30, 40, 1, 40),
]


def _grouplens_files() -> dict[str, bytes]:
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    user = "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in USERS)
    item = ""
    for iid, title, date, genres in ITEMS:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        item += f"{iid}|{title}|{date}||http://imdb/{iid}|{flags}\n"
    return {name: text.encode("latin-1") for name, text in {"u.data": data, "u.user": user, "u.item": item}.items()}


def _recbole_files() -> dict[str, bytes]:
    # Columns in a different order from the real files: the reader must go by the header names.
    inter = "item_id:token\tuser_id:token\ttimestamp:float\trating:float\n"
    inter += "".join(f"{i}\t{u}\t{t}\t{r}\n" for u, i, r, t in RATINGS)
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in USERS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for iid, title, date, genres in ITEMS:
        year = date[-4:] if date else "unkonwn"  # the real file spells it so
        item += f"{iid}\t{title}\t{year}\t{' '.join(genres)}\n"
    return {name: text.encode("utf-8") for name, text in
            {"ml-100k.inter": inter, "ml-100k.user": user, "ml-100k.item": item}.items()}  # fmt: skip


def _ml1m_files() -> dict[str, bytes]:
    ratings = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS)
    # ML-1M: UserID::Gender::Age::Occupation::Zip, age as group lower bound, occupation code.
    users = "7::M::18::17::85711\n2::F::50::0::94043-1234\n30::M::1::10::T8H1N\n"
    movies = ""
    for iid, title, date, genres in ITEMS:
        movies += f"{iid}::{title}::{'|'.join(g for g in genres if g != 'unknown')}\n"
    return {name: text.encode("latin-1") for name, text in
            {"ratings.dat": ratings, "users.dat": users, "movies.dat": movies}.items()}  # fmt: skip


def _write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _write_zip(path: Path, files: dict[str, bytes], prefix: str) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(prefix + name, data)
    return path


def _assert_same_dataset(a: RecDataset, b: RecDataset, *, same_titles: bool = True):
    for field in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a.interactions, field), getattr(b.interactions, field))
    np.testing.assert_array_equal(a.user_raw_ids, b.user_raw_ids)
    np.testing.assert_array_equal(a.item_raw_ids, b.item_raw_ids)
    for field in ("age", "age_bucket", "gender", "occupation", "zip_prefix"):
        np.testing.assert_array_equal(getattr(a.user_features, field), getattr(b.user_features, field))
    for field in ("genres", "release_year", "year_bucket"):
        np.testing.assert_array_equal(getattr(a.item_features, field), getattr(b.item_features, field))
    if same_titles:
        assert a.item_features.titles == b.item_features.titles


# ----------------------------------------------------------------------------------- ML-100K
def test_grouplens_folder_reindexes_and_decodes_features(tmp_path):
    ds = load_movielens_100k(_write_folder(tmp_path / "ml-100k", _grouplens_files()))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 4, 9)
    np.testing.assert_array_equal(ds.user_raw_ids, [2, 7, 30])
    np.testing.assert_array_equal(ds.item_raw_ids, [3, 5, 10, 40])
    inter = ds.interactions
    # First line "7 10 5 100": raw user 7 -> 1, raw item 10 -> 2.
    assert (inter.user[0], inter.item[0], inter.rating[0], inter.timestamp[0]) == (1, 2, 5.0, 100)
    assert inter.user.dtype == np.int64 and inter.rating.dtype == np.float32
    np.testing.assert_array_equal(ds.user_index([30, 2]), [2, 0])
    with pytest.raises(KeyError):
        ds.item_index([4])
    np.testing.assert_array_equal(ds.user_counts(), [2, 3, 4])
    np.testing.assert_array_equal(ds.item_counts(), [2, 2, 3, 2])

    users = ds.user_features  # dense order: raw 2, 7, 30
    np.testing.assert_array_equal(users.age, [53, 24, 17])
    assert [AGE_BUCKETS[c] for c in users.age_bucket] == ["50-55", "18-24", "<18"]
    assert [users.gender_vocab[c] for c in users.gender] == ["F", "M", "M"]
    assert [ML100K_OCCUPATIONS[c] for c in users.occupation] == ["other", "technician", "student"]
    assert [ZIP_PREFIXES[c] for c in users.zip_prefix] == ["9", "8", "other"]

    items = ds.item_features  # dense order: raw 3, 5, 10, 40
    assert items.genres.shape == (4, 19) and items.genres.dtype == np.float32
    assert [GENRES[g] for g in np.flatnonzero(items.genres[2])] == ["Animation", "Children's", "Comedy"]
    assert [GENRES[g] for g in np.flatnonzero(items.genres[1])] == ["unknown"]
    np.testing.assert_array_equal(items.release_year, [1942, -1, 1995, 2003])
    assert [YEAR_BUCKETS[c] for c in items.year_bucket] == ["1940s", "unknown", "1990s", "2000+"]
    assert items.titles[3] == "Café Lumière (2003)"
    tensors = inter.as_tensors()
    assert tensors["user"].dtype == torch.int64 and tensors["user"].shape == (9,)


def test_grouplens_zip_equals_folder(tmp_path):
    folder = load_movielens_100k(_write_folder(tmp_path / "ml-100k", _grouplens_files()))
    archive = _write_zip(tmp_path / "ml-100k.zip", _grouplens_files(), prefix="ml-100k/")
    _assert_same_dataset(load_movielens_100k(archive), folder)


def test_recbole_atomic_files_match_grouplens(tmp_path):
    grouplens = load_movielens_100k(_write_folder(tmp_path / "gl", _grouplens_files()))
    recbole = load_movielens_100k(_write_folder(tmp_path / "rb", _recbole_files()))
    _assert_same_dataset(recbole, grouplens)
    # Inside a wheel-like zip, two folders down.
    wheel = _write_zip(tmp_path / "recbole-0.0-py3-none-any.whl", _recbole_files(),
                       prefix="recbole/dataset_example/ml-100k/")  # fmt: skip
    _assert_same_dataset(load_movielens_100k(wheel), grouplens)


def test_line_by_line_path_matches_fast_path(tmp_path):
    # Clean integer files take numpy's C parser; CRLF endings, a blank line, float-typed
    # timestamps and half-star ratings take the line-by-line parser. Both must agree.
    clean = load_movielens_100k(_write_folder(tmp_path / "clean", _recbole_files()))
    files = _recbole_files()
    inter = files["ml-100k.inter"].decode().split("\n")
    inter[3] = inter[3].replace("\t200\t", "\t200.0\t")  # "5  7  200  1" -> timestamp 200.0
    inter.insert(5, "")
    files["ml-100k.inter"] = "\r\n".join(inter).encode()
    _assert_same_dataset(load_movielens_100k(_write_folder(tmp_path / "slow", files)), clean)

    ml1m = _ml1m_files()
    ml1m["ratings.dat"] = ml1m["ratings.dat"].replace(b"7::10::5::100", b"7::10::4.5::100")
    ds = load_movielens_1m(_write_folder(tmp_path / "half", ml1m))
    assert ds.interactions.rating[0] == 4.5 and ds.interactions.timestamp[0] == 100


def test_format_auto_prefers_grouplens_and_can_be_forced(tmp_path):
    folder = _write_folder(tmp_path / "both", {**_grouplens_files(), **_recbole_files()})
    assert "GroupLens" in load_movielens_100k(folder).source
    assert "RecBole" in load_movielens_100k(folder, format="recbole").source
    with pytest.raises(FileNotFoundError, match="u.data"):
        load_movielens_100k(_write_folder(tmp_path / "empty", {}))
    with pytest.raises(FileNotFoundError, match="u.user"):
        files = _grouplens_files()
        del files["u.user"]
        load_movielens_100k(_write_folder(tmp_path / "no_user", files))


def test_ml1m_folder_and_zip(tmp_path):
    ds = load_movielens_1m(_write_folder(tmp_path / "ml-1m", _ml1m_files()))
    assert (ds.name, ds.n_users, ds.n_items, ds.n_interactions) == ("ml-1m", 3, 4, 9)
    users = ds.user_features  # raw 2, 7, 30
    assert [AGE_BUCKETS[c] for c in users.age_bucket] == ["50-55", "18-24", "<18"]
    assert [users.occupation_vocab[c] for c in users.occupation] == ["other", "technician/engineer", "K-12 student"]
    assert [ZIP_PREFIXES[c] for c in users.zip_prefix] == ["9", "8", "other"]
    np.testing.assert_array_equal(ds.item_features.release_year, [1942, -1, 1995, 2003])
    assert ds.item_features.genres[1].sum() == 0  # ML-1M has no "unknown" genre
    assert ds.item_features.titles[3] == "Café Lumière (2003)"
    _assert_same_dataset(load_movielens_1m(_write_zip(tmp_path / "ml-1m.zip", _ml1m_files(), "ml-1m/")), ds)


def _corrupt(files: dict[str, bytes], name: str, line: int, new_line: str | None) -> dict[str, bytes]:
    """Replace (or with None, drop) 1-based ``line`` of file ``name``."""
    lines = files[name].decode("latin-1").split("\n")
    if new_line is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new_line
    return {**files, name: "\n".join(lines).encode("latin-1")}


@pytest.mark.parametrize(
    "make_files, loader, name, line, new_line, bad_line, message",
    [
        # A file cut off mid-line: the last line lacks fields.
        (_grouplens_files, load_movielens_100k, "u.data", 9, "30\t40\t1", 9, "expected 4 fields"),
        (_grouplens_files, load_movielens_100k, "u.data", 3, "7\t5\tfive\t200", 3, "bad rating"),
        (_grouplens_files, load_movielens_100k, "u.item", 2, "3|C|1942||x" + "|2" * 19, 2, "genre flags"),
        (_grouplens_files, load_movielens_100k, "u.user", 2, "2|53|X|other|94043", 2, "gender"),
        (_grouplens_files, load_movielens_100k, "u.user", 3, "7|24|M|technician|85711", 3, "duplicate user id 7"),
        # u.user truncated to two users: the ratings of user 30 now point nowhere.
        (_grouplens_files, load_movielens_100k, "u.user", 3, None, 6, "user id 30 is not in"),
        (_recbole_files, load_movielens_100k, "ml-100k.inter", 5, "10\t2", 5, "expected 4 fields"),
        (_recbole_files, load_movielens_100k, "ml-100k.user", 1, "user_id:token\tage:token", 1, "header lacks"),
        (_recbole_files, load_movielens_100k, "ml-100k.item", 3, "5\tunknown\tunkonwn\tNoir", 3, "genre"),
        (_ml1m_files, load_movielens_1m, "movies.dat", 4, "40::Café Lumière (2003)", 4, "expected 3 fields"),
        (_ml1m_files, load_movielens_1m, "users.dat", 1, "7::M::18::99::85711", 1, "Occupation"),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path, make_files, loader, name, line, new_line, bad_line, message
):
    folder = _write_folder(tmp_path / "data", _corrupt(make_files(), name, line, new_line))
    with pytest.raises(DataFormatError, match=message) as info:
        loader(folder)
    error = info.value
    bad_file = "u.data" if new_line is None else name  # a dropped user surfaces in the ratings
    assert error.line == bad_line and error.file.endswith(bad_file)
    assert f"{bad_file}:{bad_line}:" in str(error)
    assert isinstance(error, ValueError)


def test_truncated_zip_raises_data_format_error(tmp_path):
    archive = _write_zip(tmp_path / "ml-100k.zip", _grouplens_files(), prefix="ml-100k/")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="ml-100k.zip"):
        load_movielens_100k(archive)


def test_empty_interaction_file_is_an_error(tmp_path):
    files = {**_grouplens_files(), "u.data": b""}
    with pytest.raises(DataFormatError, match="no interactions"):
        load_movielens_100k(_write_folder(tmp_path / "d", files))


def test_real_movielens_100k_if_present():
    source = find_movielens_100k()
    if source is None:
        pytest.skip("no MovieLens-100K on this machine (recbole package/wheel or ml-100k.zip)")
    ds = load_movielens_100k(source)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert ds.user_counts().min() == 20  # ML-100K keeps users with >= 20 ratings
    assert ds.item_features.genres.shape == (1682, 19)
    assert set(np.unique(ds.interactions.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    split = split_random_ratio(ds, seed=2020)
    assert sum(split.sizes().values()) == 100000


# ----------------------------------------------------------------------------------- splits
def _toy_dataset(counts: list[int], seed: int = 0) -> RecDataset:
    """Users with the given interaction counts over distinct items, random timestamps."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    n_items = max(counts)
    items = np.concatenate([rng.permutation(n_items)[:c] for c in counts]).astype(np.int64)
    timestamps = rng.permutation(len(users)).astype(np.int64)
    inter = Interactions(users, items, np.ones(len(users), np.float32), timestamps)
    return RecDataset("toy", inter, np.arange(len(counts)), np.arange(n_items))


def test_ratio_split_sizes_follow_recbole_rounding():
    counts = np.array([0, 1, 2, 3, 9, 10, 15, 20, 21])
    expected = [[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1], [7, 1, 1], [8, 1, 1], [13, 1, 1], [16, 2, 2], [17, 2, 2]]
    np.testing.assert_array_equal(ratio_split_sizes(counts), expected)
    np.testing.assert_array_equal(ratio_split_sizes(np.array([10]), (7, 2, 1)), [[7, 2, 1]])


def _pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(inter.user.tolist(), inter.item.tolist()))


def test_random_ratio_split_sizes_disjoint_and_seeded():
    counts = [1, 2, 3, 9, 10, 20, 37]
    ds = _toy_dataset(counts)
    split = split_random_ratio(ds, seed=7)
    sizes = np.stack([np.bincount(split.part(p).user, minlength=len(counts)) for p in ("train", "valid", "test")], 1)
    np.testing.assert_array_equal(sizes, ratio_split_sizes(np.array(counts)))
    train, valid, test = _pairs(split.train), _pairs(split.valid), _pairs(split.test)
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert train | valid | test == _pairs(ds.interactions)

    again = split_random_ratio(ds, seed=7)
    for p in ("train", "valid", "test"):
        np.testing.assert_array_equal(split.part(p).item, again.part(p).item)
    other = split_random_ratio(ds, seed=8)
    assert _pairs(other.test) != test

    csr = split.test_csr
    assert csr.offsets.shape == (len(counts) + 1,) and csr.offsets.dtype == torch.int64
    assert csr.to_sets() == [set(split.test.item[split.test.user == u].tolist()) for u in range(len(counts))]
    exclusion = split.exclusion_csr("test").to_sets()
    assert exclusion == [a | b for a, b in zip(split.train_csr.to_sets(), split.valid_csr.to_sets())]
    assert split.exclusion_csr("valid").to_sets() == split.train_csr.to_sets()


def test_leave_last_out_takes_latest_by_timestamp():
    ds = _toy_dataset([1, 2, 3, 6], seed=3)
    split = split_leave_last_out(ds)
    inter = ds.interactions
    for user, count in enumerate([1, 2, 3, 6]):
        mine = inter.user == user
        by_time = inter.item[mine][np.argsort(inter.timestamp[mine])]
        assert split.test_csr.row(user).tolist() == ([by_time[-1]] if count >= 2 else [])
        assert split.valid_csr.row(user).tolist() == ([by_time[-2]] if count >= 3 else [])
        assert split.train_csr.to_sets()[user] == set(by_time[: max(count - 2, 1)].tolist())


def test_leave_last_out_breaks_timestamp_ties_by_file_order():
    items, timestamps = np.array([3, 1, 2, 0]), np.array([5, 9, 9, 1])
    inter = Interactions(np.zeros(4, np.int64), items, np.ones(4, np.float32), timestamps)
    split = split_leave_last_out(RecDataset("ties", inter, np.arange(1), np.arange(4)))
    assert split.test.item.tolist() == [2] and split.valid.item.tolist() == [1]


def test_cold_start_split_holds_out_users_with_their_first_items():
    counts = [3, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]  # user 0 is too short to hold out with n_given=3
    ds = _toy_dataset(counts, seed=5)
    cold = split_cold_start_users(ds, heldout_fraction=0.3, n_given=3, seed=1)
    assert len(cold.heldout_users) == 3 and 0 not in cold.heldout_users  # round(0.3 * 10)
    assert not np.isin(cold.train.user, cold.heldout_users).any()
    assert len(cold.train) + len(cold.given) + len(cold.target) == ds.n_interactions
    inter = ds.interactions
    for user in cold.heldout_users:
        mine = inter.user == user
        by_time = inter.item[mine][np.argsort(inter.timestamp[mine])]
        assert cold.given_csr.to_sets()[user] == set(by_time[:3].tolist())
        assert cold.target_csr.to_sets()[user] == set(by_time[3:].tolist())
    np.testing.assert_array_equal(split_cold_start_users(ds, 0.3, 3, seed=1).heldout_users, cold.heldout_users)


# ----------------------------------------------------------------------------------- synthetic
def test_synthetic_clusters_stay_mostly_within_group():
    ds = make_clustered_dataset(n_users=400, n_items=800, n_groups=4, interactions_per_user=30, p_in=0.9, seed=3)
    inter = ds.interactions
    assert ds.user_groups.shape == (400,) and ds.item_groups.shape == (800,)
    np.testing.assert_array_equal(np.bincount(ds.user_groups), [100] * 4)
    within = np.mean(ds.user_groups[inter.user] == ds.item_groups[inter.item])
    assert 0.85 < within < 0.95
    assert len(_pairs(inter)) == len(inter)  # no repeated (user, item)
    assert ds.user_counts().max() <= 30
    # Popularity skew: the most popular item of a group is far above the group's median.
    counts = ds.item_counts()
    group0 = counts[ds.item_groups == 0]
    assert group0.max() > 5 * np.median(group0)
    again = make_clustered_dataset(n_users=400, n_items=800, n_groups=4, interactions_per_user=30, p_in=0.9, seed=3)
    np.testing.assert_array_equal(again.interactions.item, inter.item)
    isolated = make_clustered_dataset(n_users=50, n_items=60, n_groups=3, p_in=1.0, seed=0)
    iso = isolated.interactions
    assert np.all(isolated.user_groups[iso.user] == isolated.item_groups[iso.item])
    # Works with the splits like real data.
    assert sum(split_leave_last_out(ds).sizes().values()) == len(inter)


# ----------------------------------------------------------------------------------- CSR
def test_user_item_csr_build_take_union():
    csr = UserItemCSR.from_pairs(np.array([2, 0, 2, 2, 0]), np.array([5, 1, 3, 5, 1]), n_rows=4)
    assert csr.offsets.tolist() == [0, 1, 1, 3, 3] and csr.indices.tolist() == [1, 3, 5]  # deduped, sorted
    taken = csr.take_rows(torch.tensor([3, 2, 2, 0]))
    assert taken.to_sets() == [set(), {3, 5}, {3, 5}, {1}]
    assert csr.union(UserItemCSR.from_sets([{0}, set(), {4}, {9}])).to_sets() == [{0, 1}, set(), {3, 4, 5}, {9}]
    offsets, indices = csr  # unpacks like the kernels' exclude=(offsets, indices)
    assert offsets is csr.offsets and indices is csr.indices
