"""topk_inner_product against the float64 reference (faiss's rule: values equal the sorted
reference; indices unique; where an index differs from the reference the scores tie)."""
import pytest
import torch

import fastsoftmax
from fastsoftmax import topk_inner_product
from fastsoftmax.reference import topk_inner_product_reference

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a visible CUDA device")
# Scores accumulate in float32 whatever the input dtype; near-equal scores may swap order.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5),
       torch.float16: (1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-5)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"threads{t}")
def threads(request):
    """Runs a test with 1, 2 and 3 threads: row blocks only, and item-axis splits with merges."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def csr(rows, device="cpu"):
    offsets = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64).cumsum(0)
    flat = [i for r in rows for i in r]
    return offsets.to(device), torch.tensor(flat, dtype=torch.int64, device=device)


def excluded_sets(exclude, batch):
    if exclude is None:
        return [set() for _ in range(batch)]
    if isinstance(exclude, tuple):
        off, idx = exclude
        return [set(idx[off[b]:off[b + 1]].tolist()) for b in range(batch)]
    return [set(int(i) for i in r) for r in exclude]


def check_topk(scores, indices, query, items, k, *, bias=None, exclude=None, exact=False):
    """The top-k test rule, against the float64 reference of the same (rounded) inputs."""
    batch = query.shape[0]
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    assert scores.shape == (batch, k) and indices.shape == (batch, k)
    assert scores.dtype == dtype and indices.dtype == torch.int64
    assert scores.device == query.device and indices.device == query.device
    scores, indices = scores.cpu(), indices.cpu()
    ref_s, ref_i = topk_inner_product_reference(query.cpu(), items.cpu(), k,
                                                bias=None if bias is None else bias.cpu(),
                                                exclude=exclude)
    rtol, atol = TOL[query.dtype]
    # Padding: (-inf, -1) together, at the end, exactly where the reference pads.
    pad = indices == -1
    assert torch.equal(pad, ref_i == -1)
    assert torch.equal(pad, scores == float("-inf"))
    # Values equal the sorted reference values.
    torch.testing.assert_close(scores.double(), ref_s, rtol=rtol, atol=atol)
    full = query.cpu().double() @ items.cpu().double().T
    if bias is not None:
        full = full + bias.cpu().double()
    banned = excluded_sets(exclude, batch)
    for b in range(batch):
        got = indices[b][indices[b] >= 0]
        assert got.unique().numel() == got.numel(), f"row {b} repeats an index"
        assert not (set(got.tolist()) & banned[b]), f"row {b} returned an excluded item"
        # Each returned score is the score of the returned index.
        torch.testing.assert_close(scores[b][: got.numel()].double(), full[b, got],
                                   rtol=rtol, atol=atol)
        # Where the index differs from the reference, the scores tie.
        diff = indices[b] != ref_i[b]
        if diff.any():
            assert not exact, f"row {b}: {indices[b][diff]} vs reference {ref_i[b][diff]}"
            torch.testing.assert_close(full[b, indices[b][diff]], full[b, ref_i[b][diff]],
                                       rtol=rtol, atol=atol)


def int_data(batch, num_items, dim, lo=-3, hi=4, device="cpu"):
    """Small integers: every score is exact in float32, so the result must match exactly,
    including the tie rule, and scores tie often."""
    q = torch.randint(lo, hi, (batch, dim), device=device).float()
    w = torch.randint(lo, hi, (num_items, dim), device=device).float()
    return q, w


# ------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("batch,num_items,dim,k", [
    (5, 100, 16, 10),
    (3, 2500, 16, 7),       # several item tiles
    (300, 3000, 32, 100),   # several row blocks
    (2, 5000, 8, 1000),     # k close to a tile, many buffer cuts
    (1, 1, 4, 1),           # N = 1
    (4, 50, 8, 50),         # k = N
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(batch, num_items, dim, k, with_bias, threads):
    q, w = torch.randn(batch, dim), torch.randn(num_items, dim)
    bias = torch.randn(num_items) if with_bias else None
    s, i = topk_inner_product(q, w, k, bias=bias)
    check_topk(s, i, q, w, k, bias=bias)


@pytest.mark.parametrize("batch,num_items,dim,k", [(7, 3000, 8, 20), (260, 2100, 4, 300)])
def test_integer_scores_exact(batch, num_items, dim, k, threads):
    q, w = int_data(batch, num_items, dim)
    s, i = topk_inner_product(q, w, k)
    check_topk(s, i, q, w, k, exact=True)


def test_ties_lower_index_wins(threads):
    w = torch.zeros(4000, 4)
    q = torch.ones(3, 4)
    s, i = topk_inner_product(q, w, 5)
    assert torch.equal(i, torch.arange(5).expand(3, 5))
    # Equal best scores far apart (other tile, other thread's split): the lower index wins.
    w[3500] = 1.0
    w[1500] = 1.0
    w[2600] = 1.0
    s, i = topk_inner_product(q, w, 2)
    assert i.tolist() == [[1500, 2600]] * 3
    assert s.tolist() == [[4.0, 4.0]] * 3
    s, i = topk_inner_product(q, w, 4)
    assert i[:, 3].tolist() == [0, 0, 0]


def test_bias_changes_order():
    q, w = torch.ones(1, 2), torch.zeros(10, 2)
    bias = torch.arange(10.0)
    s, i = topk_inner_product(q, w, 3, bias=bias)
    assert i.tolist() == [[9, 8, 7]] and s.tolist() == [[9.0, 8.0, 7.0]]


def test_unsorted_returns_the_same_set(threads):
    q, w = torch.randn(6, 16), torch.randn(3000, 16)
    s, i = topk_inner_product(q, w, 64, sorted=False)
    s_ref, i_ref = topk_inner_product(q, w, 64)
    for b in range(6):
        order = torch.argsort(i[b])
        order_ref = torch.argsort(i_ref[b])
        assert torch.equal(i[b][order], i_ref[b][order_ref])
        assert torch.equal(s[b][order], s_ref[b][order_ref])


def test_empty_batch():
    s, i = topk_inner_product(torch.randn(0, 8), torch.randn(10, 8), 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)
    s, i = topk_inner_product(torch.randn(0, 8), torch.randn(10, 8), 3, exclude=[])


def test_zero_dim():
    s, i = topk_inner_product(torch.randn(2, 0), torch.randn(10, 0), 3)
    assert s.tolist() == [[0.0] * 3] * 2 and i.tolist() == [[0, 1, 2]] * 2


# -------------------------------------------------------------------------------- exclusions


@pytest.mark.parametrize("form", ["csr", "list", "tensors"])
def test_exclusions_honoured(form, threads):
    batch, num_items, dim, k = 6, 2600, 8, 12
    q, w = int_data(batch, num_items, dim)
    _, best = topk_inner_product(q, w, 30)
    # Exclude some of each row's best items (unsorted, with a duplicate), plus random ones.
    rows = [best[b, [3, 0, 7, 0]].tolist() + torch.randint(0, num_items, (b * 20,)).tolist()
            for b in range(batch)]
    rows[2] = []
    exclude = {"csr": csr(rows), "list": rows,
               "tensors": [torch.tensor(r, dtype=torch.int32) for r in rows]}[form]
    s, i = topk_inner_product(q, w, k, exclude=exclude)
    check_topk(s, i, q, w, k, exclude=csr(rows) if form == "csr" else rows, exact=True)
    # The next best took the excluded items' places.
    for b in range(batch):
        assert not set(i[b].tolist()) & set(rows[b])


def test_more_exclusions_than_items():
    q, w = torch.randn(3, 4), torch.randn(6, 4)
    rows = [[0, 1, 2, 3, 4, 5, 5], [1, 2, 3, 4], []]
    s, i = topk_inner_product(q, w, 4, exclude=rows)
    check_topk(s, i, q, w, 4, exclude=rows)
    assert i[0].tolist() == [-1] * 4 and s[0].tolist() == [float("-inf")] * 4
    assert sorted(i[1, :2].tolist()) == [0, 5] and i[1, 2:].tolist() == [-1, -1]


def test_exclusions_cost_nothing_when_empty():
    q, w = torch.randn(4, 8), torch.randn(100, 8)
    a = topk_inner_product(q, w, 5)
    b = topk_inner_product(q, w, 5, exclude=[[]] * 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------- NaN, -inf, dtypes, layout


def test_nan_and_neg_inf_scores_are_never_returned():
    q = torch.randn(3, 4)
    w = torch.randn(20, 4)
    w[5] = float("nan")          # NaN score in every row
    q[2] = float("nan")          # every score of row 2 is NaN
    bias = torch.zeros(20)
    bias[7] = float("-inf")      # item 7 switched off
    s, i = topk_inner_product(q, w, 19, bias=bias)
    check_topk(s, i, q, w, 19, bias=bias)
    assert 5 not in i[:2].tolist()[0] and 7 not in i[:2].tolist()[1]
    assert i[0, -1].item() == -1 and i[0, -2].item() != -1   # 18 eligible items
    assert i[2].tolist() == [-1] * 19


def test_pos_inf_scores_rank_first():
    q, w = torch.ones(1, 2), torch.zeros(5, 2)
    bias = torch.tensor([0.0, float("inf"), 0.0, float("inf"), 1.0])
    s, i = topk_inner_product(q, w, 3, bias=bias)
    assert i.tolist() == [[1, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype, threads):
    q = torch.randn(5, 24).to(dtype)
    w = torch.randn(2100, 24).to(dtype)
    bias = torch.randn(2100).to(dtype)
    s, i = topk_inner_product(q, w, 40, bias=bias, exclude=[[1, 2]] * 5)
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # Reference on the rounded inputs: float32 accumulation of exact low-precision products.
    check_topk(s, i, q, w, 40, bias=bias, exclude=[[1, 2]] * 5)


def test_non_contiguous_inputs():
    base_q = torch.randn(12, 64)
    q = base_q[::2, ::2]                          # strided rows and columns
    w = torch.randn(32, 3000).T                   # column-major items
    w2 = torch.randn(3000, 64)[:, ::2]            # strided columns
    bias = torch.randn(6000)[::2]
    for items in (w, w2):
        s, i = topk_inner_product(q, items, 25, bias=bias)
        check_topk(s, i, q, items, 25, bias=bias)


def test_not_differentiable():
    q = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    s, i = topk_inner_product(q, w, 4)
    assert not s.requires_grad and not i.requires_grad
    # The documented way to get gradients: re-score the returned indices.
    rescored = (q[:, None, :] * w[i]).sum(-1)
    torch.testing.assert_close(rescored.detach(), s)
    rescored.sum().backward()
    assert q.grad is not None and w.grad is not None


# ---------------------------------------------------------------------------- bad arguments


def test_bad_arguments():
    q, w = torch.randn(2, 4), torch.randn(10, 4)
    cases = [
        (ValueError, "k must be >= 1", dict(k=0)),
        (ValueError, "exceeds the number of items", dict(k=11)),
        (TypeError, "k must be an int", dict(k=2.0)),
        (TypeError, "k must be an int", dict(k=True)),
        (ValueError, "d = 5", dict(items=torch.randn(10, 5))),
        (TypeError, "items dtype", dict(items=w.double())),
        (TypeError, "query must have dtype", dict(query=q.long(), items=w.long())),
        (TypeError, "query must be a torch.Tensor", dict(query=[[1.0] * 4])),
        (ValueError, "query must be 2-D", dict(query=torch.randn(4))),
        (ValueError, "items are on meta", dict(items=w.to("meta"))),
        (ValueError, "bias must have N", dict(bias=torch.randn(9))),
        (TypeError, "bias must have dtype", dict(bias=torch.ones(10, dtype=torch.int64))),
        (ValueError, "exclude indices must lie in", dict(exclude=[[10], []])),
        (ValueError, "exclude indices must lie in", dict(exclude=[[-1], []])),
        (ValueError, "one sequence per query row", dict(exclude=[[1]])),
        (TypeError, "must hold ints", dict(exclude=[[1.5], []])),
        (TypeError, "1-D integer tensor", dict(exclude=[torch.tensor([1.0]), []])),
        (TypeError, "got Tensor", dict(exclude=torch.tensor([[1], [2]]))),
        (ValueError, "non-decreasing", dict(exclude=(torch.tensor([0, 2, 1]),
                                                     torch.tensor([1, 2])))),
        (ValueError, "must start at 0", dict(exclude=(torch.tensor([1, 1, 2]),
                                                      torch.tensor([1, 2])))),
        (ValueError, "must equal the number", dict(exclude=(torch.tensor([0, 1, 1]),
                                                            torch.tensor([1, 2])))),
        (ValueError, r"B \+ 1 = 3", dict(exclude=(torch.tensor([0, 2]), torch.tensor([1, 2])))),
        (TypeError, "exclude offsets must have dtype",
         dict(exclude=(torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([1, 2])))),
        (TypeError, "sorted must be a bool", dict(sorted=1)),
    ]
    for exc, match, override in cases:
        args = dict(query=q, items=w, k=3)
        args.update(override)
        kwargs = {key: args.pop(key) for key in ("bias", "exclude", "sorted") if key in args}
        with pytest.raises(exc, match=match):
            topk_inner_product(args["query"], args["items"], args["k"], **kwargs)


def test_op_checks_without_python_validation():
    """The native op refuses bad input by itself (torch.compile skips the value checks)."""
    op = torch.ops.fastsoftmax.topk_inner_product
    q, w = torch.randn(2, 4), torch.randn(10, 4)
    good = torch.tensor([0, 1, 2]), torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="non-decreasing"):
        op(q, w, 3, None, torch.tensor([0, 2, 1]), torch.tensor([1, 2]), True)
    with pytest.raises(RuntimeError, match=r"must lie in \[0, N = 10\)"):
        op(q, w, 3, None, good[0], torch.tensor([1, 10]), True)
    with pytest.raises(RuntimeError, match="must equal len"):
        op(q, w, 3, None, torch.tensor([0, 1, 3]), good[1], True)
    with pytest.raises(RuntimeError, match="exceeds the number of items"):
        op(q, w, 11, None, None, None, True)
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        op(q, w, 0, None, None, None, True)
    with pytest.raises(RuntimeError, match="given together"):
        op(q, w, 3, None, good[0], None, True)
    with pytest.raises(RuntimeError, match="bias must be"):
        op(q, w, 3, torch.randn(3), None, None, True)


# ------------------------------------------------------------------- torch.library, compile


def test_opcheck():
    q, w = torch.randn(5, 8), torch.randn(300, 8)
    off, idx = csr([[1, 2], [], [3], [4, 5, 6], []])
    op = torch.ops.fastsoftmax.topk_inner_product.default
    for args in [(q, w, 7, None, None, None, True),
                 (q, w, 7, torch.randn(300), off, idx, True),
                 (q.bfloat16(), w.bfloat16(), 3, None, off, idx, False),
                 (q.requires_grad_(), w, 4, None, None, None, True)]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    q, w = torch.randn(4, 16), torch.randn(500, 16)
    bias = torch.randn(500)
    off, idx = csr([[1], [2, 3], [], [4]])

    def retrieve(query, items, bias, off, idx):
        scores, indices = fastsoftmax.topk_inner_product(query * 2.0, items, 5, bias=bias,
                                                         exclude=(off, idx))
        return scores + 1.0, indices

    compiled = torch.compile(retrieve, fullgraph=True, backend="inductor")
    s, i = compiled(q, w, bias, off, idx)
    s_ref, i_ref = retrieve(q, w, bias, off, idx)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(s, s_ref)


# ------------------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,num_items,dim,k", [
    (3, 5000, 64, 10), (70, 20000, 128, 100), (5, 9000, 32, 1000), (2, 3000, 16, 2048),
    (4, 6000, 8, 3000),   # k beyond the in-kernel queues
    (1, 1, 4, 1), (0, 10, 4, 3)])
def test_cuda_matches_cpu_and_reference(dtype, batch, num_items, dim, k):
    q = torch.randn(batch, dim).to(dtype)
    w = torch.randn(num_items, dim).to(dtype)
    bias = torch.randn(num_items)
    rows = [torch.randint(0, num_items, (b % 5 * 7,)).tolist() for b in range(batch)]
    s_cpu, i_cpu = topk_inner_product(q, w, k, bias=bias, exclude=rows)
    s, i = topk_inner_product(q.cuda(), w.cuda(), k, bias=bias.cuda(), exclude=rows)
    check_topk(s, i, q, w, k, bias=bias, exclude=rows)
    torch.testing.assert_close(s.cpu(), s_cpu, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_integer_ties_exact():
    q, w = int_data(9, 40000, 8)
    for k in (1, 37, 512, 2048, 2500):
        s, i = topk_inner_product(q.cuda(), w.cuda(), k, exclude=[[0, 1, 2]] * 9)
        check_topk(s, i, q, w, k, exclude=[[0, 1, 2]] * 9, exact=True)


@requires_cuda
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match="items are on cpu"):
        topk_inner_product(torch.randn(2, 4).cuda(), torch.randn(10, 4), 3)


# ------------------------------------------------------- bf16 scan with exact fp32 re-scoring


@pytest.mark.parametrize("batch,num_items,dim,k", [
    (8, 5000, 32, 10), (70, 9000, 64, 100), (3, 3000, 16, 1000), (300, 2500, 8, 5),
    (2, 40, 4, 40)])
def test_bf16_rescored_matches_reference(batch, num_items, dim, k, threads):
    q, w = torch.randn(batch, dim), torch.randn(num_items, dim)
    bias = torch.randn(num_items)
    rows = [torch.randint(0, num_items, (7,)).tolist() for _ in range(batch)]
    s, i = fastsoftmax.topk_inner_product_bf16(q, w, k, bias=bias, exclude=rows)
    check_topk(s, i, q, w, k, bias=bias, exclude=rows)


def test_bf16_rescored_integer_ties_exact():
    q, w = int_data(9, 6000, 8)
    s, i = fastsoftmax.topk_inner_product_bf16(q, w, 50)
    check_topk(s, i, q, w, 50, exact=True)


def test_bf16_rescored_falls_back_where_bf16_cannot_separate():
    # Items differ below bf16 resolution: the certificate fails and the rows are recomputed by the
    # exact fp32 scan; the answer is still the exact fp32 top-k.
    base = torch.randn(1, 16)
    w = base + 1e-4 * torch.randn(3000, 16)
    q = torch.randn(4, 16)
    s, i = fastsoftmax.topk_inner_product_bf16(q, w, 20)
    s32, i32 = topk_inner_product(q, w, 20)
    check_topk(s, i, q, w, 20)
    torch.testing.assert_close(s, s32, rtol=1e-5, atol=1e-5)


def test_bf16_rescored_arguments():
    q, w = torch.randn(2, 4), torch.randn(10, 4)
    with pytest.raises(TypeError, match="float32"):
        fastsoftmax.topk_inner_product_bf16(q.double(), w.double(), 3)
    with pytest.raises(ValueError, match="shape of items"):
        fastsoftmax.topk_inner_product_bf16(q, w, 3, items_bf16=w[:5].bfloat16())
    with pytest.raises(ValueError, match=r"k must lie in \[1, N = 10\]"):
        fastsoftmax.topk_inner_product_bf16(q, w, 11)
    torch.library.opcheck(torch.ops.fastsoftmax.topk_inner_product_bf16_rescored.default,
                          (q, w, w.bfloat16(), 3, None, None, None, True))
