"""ItemIndex: search with ids, bias and exclusions; save/load round trip; refusing bad files."""
import pytest
import torch

from fastsoftmax import ItemIndex
from fastsoftmax.reference import topk_inner_product_reference


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_index(num_items=500, dim=16, dtype=None, with_ids=True, with_bias=True):
    items = torch.randn(num_items, dim)
    ids = torch.randperm(10 * num_items)[:num_items] if with_ids else None
    bias = torch.randn(num_items) if with_bias else None
    return ItemIndex(items, ids, bias, dtype=dtype), items, ids, bias


def test_search_returns_ids_of_the_reference_topk():
    index, items, ids, bias = make_index()
    q = torch.randn(7, 16)
    scores, got = index.search(q, 10)
    ref_s, ref_rows = topk_inner_product_reference(q, items, 10, bias=bias)
    torch.testing.assert_close(scores.double(), ref_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, ids[ref_rows])


def test_search_excludes_by_id_and_pads_with_minus_one():
    index, items, ids, bias = make_index(num_items=6, dim=4)
    q = torch.randn(2, 4)
    exclude = [ids[:5].tolist(), [int(ids[0])]]
    scores, got = index.search(q, 4, exclude=exclude)
    assert got[0].tolist() == [int(ids[5]), -1, -1, -1]
    assert scores[0, 1:].tolist() == [float("-inf")] * 3
    assert int(ids[0]) not in got[1].tolist() and -1 not in got[1].tolist()
    rows = [list(range(5)), [0]]
    ref_s, ref_rows = topk_inner_product_reference(q, items, 4, bias=bias, exclude=rows)
    torch.testing.assert_close(scores[1].double(), ref_s[1], rtol=1e-5, atol=1e-5)


def test_search_without_ids_returns_rows():
    index, items, _, _ = make_index(with_ids=False, with_bias=False)
    q = torch.randn(3, 16)
    _, rows = index.search(q, 5, exclude=[[0], [1], [2]])
    _, ref_rows = topk_inner_product_reference(q, items, 5, exclude=[[0], [1], [2]])
    assert torch.equal(rows, ref_rows)


def test_bf16_table_is_exact_for_the_rounded_table():
    index, items, ids, bias = make_index(dtype=torch.bfloat16)
    assert index.items.dtype == torch.bfloat16
    q = torch.randn(4, 16)
    scores, got = index.search(q, 8)
    ref_s, ref_rows = topk_inner_product_reference(q.bfloat16(), index.items, 8, bias=bias)
    torch.testing.assert_close(scores.double(), ref_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, ids[ref_rows])


def test_search_errors():
    index, *_ = make_index()
    with pytest.raises(ValueError, match="d = 8 but the index has d = 16"):
        index.search(torch.randn(2, 8), 3)
    with pytest.raises(ValueError, match="exceeds the number of items"):
        index.search(torch.randn(2, 16), 501)
    with pytest.raises(ValueError, match="not in the index"):
        index.search(torch.randn(2, 16), 3, exclude=[[-5 + 10 ** 9], []])
    with pytest.raises(TypeError, match="floating"):
        index.search(torch.ones(2, 16, dtype=torch.int64), 3)


def test_constructor_errors():
    items = torch.randn(4, 3)
    with pytest.raises(ValueError, match="distinct"):
        ItemIndex(items, torch.tensor([1, 2, 2, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        ItemIndex(items, torch.tensor([1, 2, -1, 3]))
    with pytest.raises(TypeError, match="int64"):
        ItemIndex(items, torch.tensor([1, 2, 3, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="bias must have shape"):
        ItemIndex(items, bias=torch.randn(3))
    with pytest.raises(TypeError, match="dtype must be one of"):
        ItemIndex(items, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        ItemIndex(torch.randn(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_ids,with_bias", [(True, True), (False, False)])
def test_save_load_round_trip(tmp_path, dtype, with_ids, with_bias):
    index, *_ = make_index(dtype=dtype, with_ids=with_ids, with_bias=with_bias)
    path = tmp_path / "index.pt"
    index.save(path)
    loaded = ItemIndex.load(path)
    assert loaded.dtype == dtype and len(loaded) == len(index) and loaded.dim == index.dim
    assert torch.equal(loaded.items, index.items)
    for a, b in ((loaded.ids, index.ids), (loaded.bias, index.bias)):
        assert (a is None and b is None) or torch.equal(a, b)
    q = torch.randn(3, 16)
    a, b = index.search(q, 5, exclude=[[int(index.ids[0]) if with_ids else 0]] * 3), \
        loaded.search(q, 5, exclude=[[int(index.ids[0]) if with_ids else 0]] * 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_load_refuses_corrupted_files(tmp_path):
    index, *_ = make_index()
    path = tmp_path / "index.pt"
    index.save(path)
    raw = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable ItemIndex file"):
        ItemIndex.load(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(ValueError, match="not a readable ItemIndex file"):
        ItemIndex.load(garbage)

    # Flip bytes inside the items payload: the zip still opens, the checksum catches it.
    flipped = bytearray(raw)
    needle = index.items[100:102].contiguous().view(torch.uint8).numpy().tobytes()
    at = bytes(flipped).find(needle)
    assert at > 0
    flipped[at:at + 4] = bytes(b ^ 0xFF for b in flipped[at:at + 4])
    corrupt = tmp_path / "flipped.pt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted"):
        ItemIndex.load(corrupt)

    with pytest.raises(FileNotFoundError):
        ItemIndex.load(tmp_path / "missing.pt")


def test_load_refuses_foreign_or_mismatched_files(tmp_path):
    index, *_ = make_index()
    state = index.state_dict()

    def write(name, obj):
        p = tmp_path / name
        torch.save(obj, p)
        return p

    with pytest.raises(ValueError, match="not an ItemIndex file"):
        ItemIndex.load(write("other.pt", {"weight": torch.randn(3)}))
    with pytest.raises(ValueError, match="unsupported ItemIndex version 99"):
        ItemIndex.load(write("v99.pt", dict(state, version=99)))
    with pytest.raises(ValueError, match="header says"):
        ItemIndex.load(write("dim.pt", dict(state, dim=17)))
    with pytest.raises(ValueError, match="header says"):
        ItemIndex.load(write("dtype.pt", dict(state, dtype="bfloat16")))
    bad_ids = dict(state["tensors"], ids=state["tensors"]["ids"][:-1])
    crc = dict(state["crc32"])
    from fastsoftmax.index import _crc32
    crc["ids"] = _crc32(bad_ids["ids"])
    with pytest.raises(ValueError, match="inconsistent contents: ids must have shape"):
        ItemIndex.load(write("ids.pt", dict(state, tensors=bad_ids, crc32=crc)))
    # Pickled code is refused (weights_only=True), not executed.
    with pytest.raises(ValueError, match="not a readable ItemIndex file"):
        ItemIndex.load(write("code.pt", {"format": "fastsoftmax.ItemIndex", "f": print}))


def test_index_to_device_round_trip():
    index, *_ = make_index()
    again = index.to("cpu")
    assert torch.equal(again.items, index.items) and torch.equal(again.ids, index.ids)


def test_bf16_scan_index_is_exact_fp32_and_round_trips(tmp_path):
    items = torch.randn(3000, 32)
    ids = torch.arange(3000) * 3
    index = ItemIndex(items, ids, torch.randn(3000), bf16_scan=True)
    assert index.bf16_scan and index.dtype == torch.float32
    q = torch.randn(6, 32)
    scores, got = index.search(q, 25, exclude=[[0, 3]] * 6)
    plain = ItemIndex(items, ids, index.bias)
    ref_s, ref_ids = plain.search(q, 25, exclude=[[0, 3]] * 6)
    torch.testing.assert_close(scores, ref_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, ref_ids)
    path = tmp_path / "bf16.pt"
    index.save(path)
    loaded = ItemIndex.load(path)
    assert loaded.bf16_scan
    assert torch.equal(loaded.search(q, 25)[1], index.search(q, 25)[1])
    with pytest.raises(ValueError, match="bf16_scan needs a float32 table"):
        ItemIndex(items, dtype=torch.bfloat16, bf16_scan=True)
