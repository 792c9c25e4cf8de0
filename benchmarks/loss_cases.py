"""Benchmark cases of SampledSoftmaxLoss: one training step (forward + backward + SGD update),
and the unigram sampler against torch.multinomial.

The step: a linear query tower on B inputs, the loss over an ``nn.Embedding(N, d, sparse=True)``
item table with S log-uniform shared negatives and H hard negatives per row mined from a pool
of P, then ``torch.optim.SGD`` on the tower and the table (a sparse update of the touched rows).

Side by side in one process, on the same table, tower and inputs:
  fastsoftmax   SampledSoftmaxLoss: unique ids embedded once, duplicates merged, fused kernel,
                fastsoftmax.mine_hard_negatives.
  eager         the same estimator written out in plain PyTorch (``EagerSampledSoftmax``): the
                [B, S] and [B, P] logits materialised, masks for the accidental hits and the
                positives excluded from mining, torch.multinomial for the hard negatives, one
                logsumexp over [positive | shared | hard].
Both draw their shared negatives and pool with the same sampler; the case's check runs both on
one draw (the eager step reuses the mined indices) and compares loss and query gradient.
The hard-negative cases need fastsoftmax.mine_hard_negatives; without it they are reported as
not run, and the H = 0 case still runs.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import fastsoftmax
from fastsoftmax.sampled_loss import SampledSoftmaxLoss
from fastsoftmax.sampling import LogUniformSampler, UnigramSampler

from common import Row, measure

SUITE = "loss"


class EagerSampledSoftmax:
    """The estimator of SampledSoftmaxLoss (shared log-uniform draws + "sample"-mode hard
    negatives, logQ-corrected, size-weighted mixture, accidental hits removed) in eager PyTorch,
    materialising every logit. Positives: [B] ids (one per row)."""

    def __init__(self, sampler, num_negatives: int, hard_negatives: int, pool: int,
                 temperature: float = 1.0, seed: int = 0):
        self.sampler, self.S, self.H, self.P = sampler, num_negatives, hard_negatives, pool
        self.tau = temperature
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, query, table: nn.Embedding, positive_ids, hard_index=None):
        S, H, tau = self.S, self.H, self.tau
        shared = self.sampler.sample(S, generator=self.generator)
        neg_ids, neg_log_q = shared.ids, shared.log_q
        if H:
            neg_log_q = neg_log_q + math.log((S + H) / S)
        pos_emb, neg_emb = table(positive_ids), table(neg_ids)
        s_pos = (query * pos_emb).sum(1) / tau                                    # [B]
        s_neg = query @ neg_emb.T / tau - neg_log_q                               # [B, S]
        s_neg = s_neg.masked_fill(positive_ids[:, None] == neg_ids[None, :], -math.inf)
        logits = [s_pos[:, None], s_neg]
        if H:
            pool = self.sampler.sample(self.P, generator=self.generator)
            pool_emb = table(pool.ids)                                            # [P, d]
            with torch.no_grad():
                scores = query @ pool_emb.T / tau                                 # [B, P]
                scores.masked_fill_(positive_ids[:, None] == pool.ids[None, :], -math.inf)
                log_pi = torch.log_softmax(scores, 1)
                if hard_index is None:
                    hard_index = torch.multinomial(log_pi.exp(), H, replacement=True,
                                                   generator=self.generator)
                hard_log_q = (pool.log_q[hard_index] + math.log(H) + log_pi.gather(1, hard_index)
                              + math.log((S + H) / H))
            s_hard = torch.einsum("bd,bhd->bh", query, pool_emb[hard_index]) / tau - hard_log_q
            logits.append(s_hard)
        return (torch.logsumexp(torch.cat(logits, 1), 1) - s_pos).mean()


@dataclass
class Case:
    name: str
    impls: Dict[str, Callable[[], object]]   # impl name -> one training step
    check: Callable[[], None]
    targets: List[Tuple[str, float]] = field(default_factory=list)  # (impl, min speed-up)
    skipped: Optional[str] = None


def train_step_case(B=4096, d=128, N=1_000_000, S=8192, H=64, P=4096, seed=0) -> Case:
    name = f"step B={B} d={d} N={N} S={S} H={H} pool={P}"
    if H and not hasattr(fastsoftmax, "mine_hard_negatives"):
        return Case(name, {}, lambda: None,
                    skipped="needs fastsoftmax.mine_hard_negatives, not in this build")
    g = torch.Generator().manual_seed(seed)
    table = nn.Embedding(N, d, sparse=True)
    with torch.no_grad():
        table.weight.normal_(0.0, 0.1, generator=g)
    tower = nn.Linear(d, d)
    x = torch.randn(B, d, generator=g)
    sampler = LogUniformSampler(N)
    positives = sampler.sample(B, generator=g).ids          # popular items are positives more often
    params = list(tower.parameters()) + list(table.parameters())
    opt_ours = torch.optim.SGD(params, lr=1e-3)
    opt_eager = torch.optim.SGD(params, lr=1e-3)
    ours = SampledSoftmaxLoss(N, S, sampler=sampler, hard_negatives=H, hard_negative_pool=P,
                              seed=seed)
    eager = EagerSampledSoftmax(sampler, S, H, P, seed=seed)

    def step(loss_fn, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn(tower(x), table, positives).backward()
            opt.step()
        return run

    def check():
        query = tower(x).detach()
        q1, q2 = query.clone().requires_grad_(), query.clone().requires_grad_()
        loss, draw = ours(q1, table, positives, seed=123, return_draw=True)
        eager.generator.manual_seed(123)
        ref = eager(q2, table, positives, hard_index=draw.hard_index)
        loss.backward()
        ref.backward()
        if not math.isclose(loss.item(), ref.item(), rel_tol=1e-4, abs_tol=1e-4):
            raise AssertionError(f"{name}: loss {loss.item()} != eager {ref.item()}")
        err = ((q1.grad - q2.grad).abs().max() / q2.grad.abs().max()).item()
        if err > 1e-3:
            raise AssertionError(f"{name}: query gradients differ from eager ({err:.2g})")
        table.zero_grad(set_to_none=True)

    return Case(name, {"fastsoftmax": step(ours, opt_ours), "eager": step(eager, opt_eager)},
                check, [("eager", 3.0)])


def unigram_sampling_case(N=1_000_000, n=1_000_000, seed=0) -> Case:
    """Drawing n ids from a Zipf-like unigram over N items: the alias table of UnigramSampler
    (built once, as a training loop keeps it) against torch.multinomial with replacement."""
    name = f"unigram sampling N={N} n={n}"
    g = torch.Generator().manual_seed(seed)
    counts = torch.rand(N, generator=g, dtype=torch.float64) ** -1.5   # heavy-tailed counts
    sampler = UnigramSampler(counts)
    probs = (counts / counts.sum()).to(torch.float32)
    gen_ours, gen_torch = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)

    def check():
        # Both follow the same distribution: mass of the 1000 most probable items, drawn vs exact.
        top = torch.topk(probs, 1000).indices
        exact = probs[top].sum().item()
        for ids in (sampler.sample(n, generator=gen_ours).ids,
                    torch.multinomial(probs, n, replacement=True, generator=gen_torch)):
            drawn = torch.isin(ids, top).double().mean().item()
            if abs(drawn - exact) > 5 * math.sqrt(exact * (1 - exact) / n) + 1e-3:
                raise AssertionError(f"{name}: top-1000 mass {drawn:.4f} != {exact:.4f}")

    return Case(name, {
        "fastsoftmax": lambda: sampler.sample(n, generator=gen_ours),
        "torch.multinomial": lambda: torch.multinomial(probs, n, replacement=True,
                                                       generator=gen_torch),
    }, check, [("torch.multinomial", 5.0)])


QUICK = dict(B=1024, N=100_000, S=2048)


def cases(quick: bool) -> List[Callable[[], Case]]:
    if quick:
        return [lambda: train_step_case(**QUICK, H=64, P=1024),
                lambda: train_step_case(**QUICK, H=0),
                lambda: unigram_sampling_case(N=100_000, n=100_000)]
    return [train_step_case, lambda: train_step_case(H=0), unigram_sampling_case]


def run(quick: bool, repeats: int) -> Tuple[List[Row], List[str]]:
    rows, verdicts = [], []
    for make in cases(quick):
        case = make()
        if case.skipped:
            verdicts.append(f"- {case.name}: not run: {case.skipped}")
            print(f"  {case.name}: not run ({case.skipped})", flush=True)
            continue
        case.check()
        case_rows = []
        for impl, fn in case.impls.items():
            case_rows.append(measure(SUITE, case.name, impl, fn, repeats))
            print(f"  {case.name:48s} {impl:12s} {case_rows[-1].median_ms:10.1f} ms", flush=True)
        rows += case_rows
        by_impl = {r.impl: r for r in case_rows}
        for impl, bound in case.targets:
            ratio = by_impl[impl].median_ms / by_impl["fastsoftmax"].median_ms
            verdicts.append(f"- {case.name}: {ratio:.2f}x faster than {impl} "
                            f"(target >= {bound}x): {'met' if ratio >= bound else 'NOT met'}")
        del case
    return rows, verdicts
