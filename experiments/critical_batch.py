"""The critical batch of paper §5.1 (Figs. 4–7), extracted from final losses by seed.

At a fixed token horizon D, the paper's claim is that under the SDE rule every physical batch
below a critical one gives the same final loss (a *small-batch plateau*), and the loss rises
above it. With S = D/(B·L) steps, the critical batch B_crit and the critical step count
S_crit = D/(B_crit·L) are two views of one number.

Definitions used here (the paper states no tolerance; this one is ours):

- **reference**: the smallest B of the grid at that D.
- **plateau**: the mean final loss of the reference over its seeds.
- **paired difference** Δ_B: for each seed, loss(B) − loss(reference); runs of one seed share
  the initialisation and data order, so the seed-to-seed noise that both share cancels. Δ_B is
  the mean over the seeds both points finished (with its sample sd).
- **tolerance** τ: given, or (:func:`paired_tolerance`) twice the pooled sample sd of the
  single-seed paired differences, the yardstick the rest of the reports use.
- **B_crit**: the largest B such that Δ_B' ≤ τ for *every* B' from the reference up to B (the
  plateau is contiguous from below; a point after the first exceedance that falls back within τ
  does not extend it). **S_crit** = D/(B_crit·L).
- **bound**: ``"below"`` when already the second-smallest B exceeds τ (only the reference is on
  the plateau: no plateau is resolved and the true B_crit lies below the second grid point),
  ``"above"`` when every B is within τ (B_crit is at least the largest B run), else ``""`` (the
  true B_crit lies between B_crit and the next grid point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SeedLosses = dict[int, float]  # seed -> final loss


def paired_difference(a: SeedLosses, ref: SeedLosses) -> tuple[float, float, int]:
    """Mean, sample sd (NaN for one seed) and count of a[s] − ref[s] over the seeds both have."""
    ds = [float(a[s]) - float(ref[s]) for s in a if s in ref]
    if not ds:
        return math.nan, math.nan, 0
    mean = sum(ds) / len(ds)
    sd = math.sqrt(sum((d - mean) ** 2 for d in ds) / (len(ds) - 1)) if len(ds) > 1 else math.nan
    return mean, sd, len(ds)


def paired_tolerance(curves: list[dict[float, SeedLosses]], k: float = 2.0) -> float:
    """k × the pooled sample sd of the single-seed paired differences to each curve's smallest B
    (pooled over every curve and every other B with at least two shared seeds; NaN if none)."""
    num, dof = 0.0, 0
    for losses in curves:
        if len(losses) < 2:
            continue
        ref = losses[min(losses)]
        for b, by_seed in losses.items():
            if b == min(losses):
                continue
            ds = [float(by_seed[s]) - float(ref[s]) for s in by_seed if s in ref]
            if len(ds) >= 2:
                m = sum(ds) / len(ds)
                num += sum((d - m) ** 2 for d in ds)
                dof += len(ds) - 1
    return k * math.sqrt(num / dof) if dof else math.nan


@dataclass(frozen=True)
class CriticalBatch:
    """B_crit and S_crit at one token horizon (see the module docstring for the definitions)."""

    tokens: float
    seq_len: int
    tolerance: float
    reference_batch: float
    plateau: float
    plateau_sd: float
    batch_sizes: list[float]
    deltas: dict[float, tuple[float, float, int]] = field(default_factory=dict)  # B -> (mean, sd, n)
    b_crit: float = math.nan
    bound: str = ""

    @property
    def s_crit(self) -> float:
        return self.tokens / (self.b_crit * self.seq_len) if math.isfinite(self.b_crit) else math.nan

    @property
    def next_batch(self) -> float:
        """The first grid B above B_crit (NaN when B_crit is the largest B run)."""
        above = [b for b in self.batch_sizes if b > self.b_crit]
        return min(above) if above else math.nan

    def describe(self) -> str:
        """B_crit and S_crit as the grid resolves them, in words."""
        b, nb, L, D = self.b_crit, self.next_batch, self.seq_len, self.tokens
        if not math.isfinite(b):
            return "no B_crit: no tolerance (one seed) or no points"
        if self.bound == "below":
            return (f"no plateau: B = {nb:g} is already more than τ above B = {b:g}, so B_crit < {nb:g} "
                    f"and S_crit > {D / (nb * L):g} steps")
        if self.bound == "above":
            return f"every B is within τ: B_crit ≥ {b:g}, S_crit ≤ {self.s_crit:g} steps"
        return (f"B_crit = {b:g} (the true value in [{b:g}, {nb:g})), S_crit = {self.s_crit:g} steps "
                f"(in ({D / (nb * L):g}, {self.s_crit:g}])")


def critical_batch(losses: dict[float, SeedLosses], tokens: float, seq_len: int, tolerance: float) -> CriticalBatch:
    """B_crit and S_crit at one horizon D from ``losses[B][seed]`` (final losses)."""
    bs = sorted(b for b, v in losses.items() if v)
    if not bs:
        raise ValueError("critical_batch: no batch sizes with finished seeds")
    ref = losses[bs[0]]
    vals = [float(v) for v in ref.values()]
    plateau = sum(vals) / len(vals)
    plateau_sd = (math.sqrt(sum((v - plateau) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan)
    deltas = {b: paired_difference(losses[b], ref) for b in bs}
    b_crit, bound = math.nan, ""
    if math.isfinite(tolerance):
        b_crit = bs[0]
        for b in bs[1:]:
            d, _, n = deltas[b]
            if not n or d > tolerance:
                break
            b_crit = b
        if len(bs) > 1 and b_crit == bs[0]:
            bound = "below"
        elif b_crit == bs[-1]:
            bound = "above"
    return CriticalBatch(tokens=float(tokens), seq_len=int(seq_len), tolerance=float(tolerance),
                         reference_batch=float(bs[0]), plateau=plateau, plateau_sd=plateau_sd,
                         batch_sizes=[float(b) for b in bs], deltas=deltas, b_crit=float(b_crit), bound=bound)
