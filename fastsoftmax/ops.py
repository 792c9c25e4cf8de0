"""Registration of fastsoftmax's native ops with torch: fake kernels and autograd.

The kernels themselves are registered from C++ (csrc/cpu, csrc/cuda) under torch.ops.fastsoftmax;
importing ``fastsoftmax._C`` loads them. Fake kernels give torch.compile the output shapes without
running anything; autograd wires each forward op to its backward op.
"""
import torch

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)

_ops = torch.ops.fastsoftmax


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate (and return losses) in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- sampled softmax


@torch.library.register_fake("fastsoftmax::sampled_softmax_ce")
def _sampled_softmax_ce_fake(query, positives, candidates, positive_ids, candidate_ids,
                             positive_weights, positive_log_q, candidate_log_q, candidate_index,
                             temperature, remove_accidental_hits):
    torch._check(query.dim() == 2, lambda: "query must be [B, d]")
    torch._check(positives.dim() == 3, lambda: "positives must be [B, T, d]")
    torch._check(candidates.dim() == 2, lambda: "candidates must be [C, d]")
    torch._check(positives.shape[0] == query.shape[0], lambda: "positives must have B rows")
    torch._check(candidates.shape[1] == query.shape[1], lambda: "candidates must have d columns")
    batch = query.shape[0]
    dtype = acc_dtype(query.dtype)
    return query.new_empty((batch,), dtype=dtype), query.new_empty((batch,), dtype=dtype)


@torch.library.register_fake("fastsoftmax::sampled_softmax_ce_backward")
def _sampled_softmax_ce_backward_fake(grad_loss, query, positives, candidates, positive_ids,
                                      candidate_ids, positive_weights, positive_log_q,
                                      candidate_log_q, candidate_index, lse, temperature,
                                      remove_accidental_hits):
    return torch.empty_like(query), torch.empty_like(positives), torch.empty_like(candidates)


def _sampled_setup_context(ctx, inputs, output):
    (query, positives, candidates, positive_ids, candidate_ids, positive_weights,
     positive_log_q, candidate_log_q, candidate_index, temperature,
     remove_accidental_hits) = inputs
    _, lse = output
    # NB: lse is an auxiliary output for the backward; it carries no gradient of its own.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, positives, candidates, positive_ids, candidate_ids,
                          positive_weights, positive_log_q, candidate_log_q, candidate_index, lse)
    ctx.temperature = temperature
    ctx.remove_accidental_hits = remove_accidental_hits


def _sampled_backward(ctx, grad_loss, _grad_lse):
    (query, positives, candidates, positive_ids, candidate_ids, positive_weights,
     positive_log_q, candidate_log_q, candidate_index, lse) = ctx.saved_tensors
    grad_query, grad_positives, grad_candidates = _ops.sampled_softmax_ce_backward(
        grad_loss, query, positives, candidates, positive_ids, candidate_ids, positive_weights,
        positive_log_q, candidate_log_q, candidate_index, lse, ctx.temperature,
        ctx.remove_accidental_hits)
    return (grad_query, grad_positives, grad_candidates) + (None,) * 8


torch.library.register_autograd("fastsoftmax::sampled_softmax_ce", _sampled_backward,
                                setup_context=_sampled_setup_context)

@torch.library.register_fake("fastsoftmax::sampled_softmax_ce_fused")
def _sampled_softmax_ce_fused_fake(query, positives, candidates, positive_ids, candidate_ids,
                                   positive_weights, positive_log_q, candidate_log_q,
                                   candidate_index, row_coef, temperature, remove_accidental_hits):
    torch._check(row_coef.dim() == 1 and row_coef.shape[0] == query.shape[0],
                 lambda: "row_coef must be [B]")
    loss = query.new_empty((), dtype=acc_dtype(query.dtype))
    return loss, torch.empty_like(query), torch.empty_like(positives), torch.empty_like(candidates)


def _fused_setup_context(ctx, inputs, output):
    _, grad_query, grad_positives, grad_candidates = output
    ctx.mark_non_differentiable(grad_query, grad_positives, grad_candidates)
    ctx.save_for_backward(grad_query, grad_positives, grad_candidates)


def _is_eager_cpu_one(t: torch.Tensor) -> bool:
    """A plain CPU tensor holding 1, outside any tracing (compile, fake or functional tensors,
    dispatch modes), where reading its value is free and cannot be baked into a graph."""
    return (type(t) is torch.Tensor and t.device.type == "cpu" and t.numel() == 1
            and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and float(t) == 1.0)


def _fused_backward(ctx, grad_loss, *_unused):
    # The op already holds d loss / d inputs; the chain rule only scales them. NB: loss.backward()
    # seeds grad_loss = 1, and scaling [B, T, d] gradients by 1 cost 7 % of a training step, so
    # eager CPU skips it (reading a CPU scalar does not synchronise; traced graphs keep the mul).
    saved = ctx.saved_tensors
    if _is_eager_cpu_one(grad_loss):
        return tuple(saved) + (None,) * 9
    grads = tuple((grad_loss * g).to(g.dtype) for g in saved)
    return grads + (None,) * 9


torch.library.register_autograd("fastsoftmax::sampled_softmax_ce_fused", _fused_backward,
                                setup_context=_fused_setup_context)

# -------------------------------------------------------------------------------- full softmax


@torch.library.register_fake("fastsoftmax::full_softmax_ce")
def _full_softmax_ce_fake(query, weight, bias, targets, target_weights, temperature):
    torch._check(query.dim() == 2, lambda: "query must be [B, d]")
    torch._check(weight.dim() == 2, lambda: "weight must be [N, d]")
    torch._check(weight.shape[1] == query.shape[1], lambda: "weight must have d columns")
    torch._check(targets.dim() == 2, lambda: "targets must be [B, T]")
    batch = query.shape[0]
    dtype = acc_dtype(query.dtype)
    return query.new_empty((batch,), dtype=dtype), query.new_empty((batch,), dtype=dtype)


@torch.library.register_fake("fastsoftmax::full_softmax_ce_backward")
def _full_softmax_ce_backward_fake(grad_loss, query, weight, bias, targets, target_weights, lse,
                                   temperature):
    grad_bias = torch.empty_like(bias) if bias is not None else query.new_empty((0,))
    return torch.empty_like(query), torch.empty_like(weight), grad_bias


def _full_setup_context(ctx, inputs, output):
    query, weight, bias, targets, target_weights, temperature = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, weight, bias, targets, target_weights, lse)
    ctx.temperature = temperature


def _full_backward(ctx, grad_loss, _grad_lse):
    query, weight, bias, targets, target_weights, lse = ctx.saved_tensors
    grad_query, grad_weight, grad_bias = _ops.full_softmax_ce_backward(
        grad_loss, query, weight, bias, targets, target_weights, lse, ctx.temperature)
    return grad_query, grad_weight, (grad_bias if bias is not None else None), None, None, None


torch.library.register_autograd("fastsoftmax::full_softmax_ce", _full_backward,
                                setup_context=_full_setup_context)

# ------------------------------------------------------------------------ hard-negative mining


@torch.library.register_fake("fastsoftmax::mine_hard_negatives")
def _mine_hard_negatives_fake(query, pool, pool_ids, exclude_ids, pool_log_q, num, mode,
                              temperature, seed, offset):
    torch._check(query.dim() == 2, lambda: "query must be [B, d]")
    torch._check(pool.dim() == 2, lambda: "pool must be [P, d]")
    torch._check(pool.shape[1] == query.shape[1], lambda: "pool must have d columns")
    torch._check(mode in ("sample", "topk"),
                 lambda: f"mode must be 'sample' or 'topk', got {mode!r}")
    torch._check(num > 0, lambda: f"num must be > 0, got {num}")
    if mode == "topk":
        torch._check(num <= pool.shape[0], lambda: "num must be <= the pool size in topk mode")
    torch._check(temperature > 0, lambda: f"temperature must be > 0, got {temperature}")
    if exclude_ids is not None:
        torch._check(exclude_ids.dim() == 2 and exclude_ids.shape[0] == query.shape[0],
                     lambda: "exclude_ids must be [B, T]")
    batch = query.shape[0]
    # NB: no autograd registration: the op is not differentiable (fastsoftmax/mining.py).
    return (query.new_empty((batch, num), dtype=torch.int64),
            query.new_empty((batch, num), dtype=acc_dtype(query.dtype)))


# ------------------------------------------------------------------------ negative sampling


@torch.library.register_fake("fastsoftmax::alias_sample")
def _alias_sample_fake(alias_prob, alias, num, seed, offset, log_weight=None, log_shift=0.0):
    torch._check(alias_prob.dim() == 1 and alias.dim() == 1,
                 lambda: "alias_prob and alias must be 1-D")
    torch._check(num >= 0, lambda: f"num must be >= 0, got {num}")
    # NB: no autograd registration: sampling is not differentiable.
    return (alias.new_empty((num,)),
            alias_prob.new_empty((num if log_weight is not None else 0,)))
