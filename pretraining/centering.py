"""Teacher target normalisation: softmax centering (DINO, Caron et al. 2021, §3.1) and Sinkhorn-Knopp
(SwAV, Caron et al. 2020, §3.1; DINOv2 paper §4 and ``dinov2/loss/{dino_clstoken,ibot_patch}_loss.py``).

Both turn teacher logits ``z`` of shape ``(n, K)`` into target probabilities of the same shape. They
reduce over all ranks when ``torch.distributed`` is initialised and work in a single process
otherwise. Nothing here updates state inside ``forward``: :class:`SoftmaxCentering` exposes an
explicit :meth:`SoftmaxCentering.update`.
"""

import torch
import torch.distributed as dist
from torch import nn

from .losses.dino import row_chunks


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``"sum"`` or ``"max"``) over the default group; a no-op in one process."""
    if _is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


class SoftmaxCentering(nn.Module):
    """Softmax with an EMA center: ``t = softmax((z - c) / tau_t)``.

    The center ``c`` (buffer of shape ``(1, K)``) is updated by :meth:`update` as
    ``c <- m * c + (1 - m) * mean(z)``, where the mean runs over all rows of ``z`` on all ranks.

    Ordering: DINOv2 registers the batch mean at step ``t`` and applies it lazily at the start of
    step ``t + 1``, so the targets of step ``t`` use the center built from steps ``<= t - 1``. Calling
    ``probs = centering(z, tau)`` *before* ``centering.update(z)`` in every step reproduces exactly
    that. The same class serves the DINO (CLS) and iBOT (masked patch) centers; for iBOT pass the rows of
    the masked patches.

    Args:
        num_prototypes: Number of prototypes K.
        momentum: Center momentum ``m`` (0.9).
    """

    def __init__(self, num_prototypes: int, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}.")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def _check(self, teacher_logits: torch.Tensor) -> None:
        if teacher_logits.shape[-1] != self.center.shape[-1]:
            raise ValueError(
                f"Expected teacher logits with {self.center.shape[-1]} prototypes in the last dimension, "
                f"got shape {tuple(teacher_logits.shape)}."
            )

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``(n, K)`` logits -> ``(n, K)`` probabilities (fp32). Does not change the center."""
        self._check(teacher_logits)
        logits = teacher_logits.reshape(-1, self.center.shape[-1])  # (..., K) -> (n, K)
        probs = [torch.softmax((chunk.float() - self.center) / teacher_temp, dim=-1) for (chunk,) in row_chunks(logits)]
        return torch.cat(probs).view(teacher_logits.shape)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """EMA update of the center with the global (all-rank) mean of ``teacher_logits`` ``(n, K)``.

        The sum and the row count are all-reduced together, so the mean is exact even when ranks hold
        different numbers of rows. (DINOv2 divides by ``n_local * world_size`` for DINO, the same for
        equal batches, and averages per-rank means for iBOT.)
        """
        self._check(teacher_logits)
        logits = teacher_logits.detach().float().reshape(-1, self.center.shape[-1])  # (..., K) -> (n, K)
        stats = torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])])  # (K + 1,)
        _all_reduce(stats)
        if stats[-1] == 0:  # no rows anywhere (e.g. no masked patch): keep the center
            return
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)  # (1, K)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp normalisation of teacher logits, distributed over all ranks.

    With ``Q = exp(z / tau_t)^T`` (``K x B_local``) and ``B`` the number of rows on *all* ranks, in fp32:

    1. ``Q /= sum(Q)`` (global sum);
    2. ``n_iterations`` times: divide each prototype row by its global row sum and by ``K``, then
       each sample column by its (local) column sum and by ``B``;
    3. return ``(Q * B)^T``: every row (sample) sums to 1 and, up to the convergence of the few
       iterations, every prototype receives the same total mass ``B / K`` summed over all ranks.

    ``B`` is the all-reduced row count, i.e. ``B_local * world_size`` for DINO CLS targets and the total
    number of masked patches for iBOT (pass only the valid masked rows). Unlike DINOv2's iBOT version,
    this never calls ``all_reduce`` without an initialised process group.

    Two numerical guards that do not change the result in exact arithmetic: the global max logit is
    subtracted before ``exp`` (the first normalisation removes any common factor), and row and
    column sums are clamped to the smallest positive float, so an all-zero row or column (exp
    underflow) stays 0 instead of becoming NaN.

    Args:
        teacher_logits: ``(B_local, K)`` teacher logits on this rank.
        teacher_temp: Teacher temperature ``tau_t``.
        n_iterations: Number of Sinkhorn iterations (3).

    Returns:
        ``(B_local, K)`` fp32 target probabilities.
    """
    if teacher_logits.dim() != 2:
        raise ValueError(f"Expected teacher logits of shape (B, K), got {tuple(teacher_logits.shape)}.")
    if n_iterations < 1:
        raise ValueError(f"`n_iterations` must be >= 1, got {n_iterations}.")
    logits = teacher_logits.float()
    n_local, n_prototypes = logits.shape

    n_samples = torch.tensor([float(n_local)], device=logits.device)
    _all_reduce(n_samples)
    if n_samples.item() == 0:
        return logits.clone()
    # -inf on ranks with no rows, so they do not affect the max.
    max_logit = logits.max().reshape(1) if n_local > 0 else logits.new_full((1,), float("-inf"))
    _all_reduce(max_logit, op="max")

    q = torch.exp((logits - max_logit) / teacher_temp).t()  # (B_local, K) -> (K, B_local)
    total = q.sum().reshape(1)
    _all_reduce(total)
    q /= total
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(n_iterations):
        row_sums = q.sum(dim=1, keepdim=True)  # (K, 1)
        _all_reduce(row_sums)
        q /= row_sums.clamp_min(tiny)
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # (1, B_local): column sums are local
        q /= n_samples
    q *= n_samples
    return q.t()  # (K, B_local) -> (B_local, K)


class SinkhornKnoppCentering(nn.Module):
    """Stateless counterpart of :class:`SoftmaxCentering` using :func:`sinkhorn_knopp`.

    Same call signature, so a training loop can switch between ``"softmax_centering"`` and
    ``"sinkhorn_knopp"`` (DINOv2 ``train.centering``); :meth:`update` is a no-op.
    """

    def __init__(self, n_iterations: int = 3):
        super().__init__()
        self.n_iterations = n_iterations

    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``(n, K)`` logits -> ``(n, K)`` fp32 probabilities."""
        return sinkhorn_knopp(teacher_logits, teacher_temp, self.n_iterations)

    def update(self, teacher_logits: torch.Tensor) -> None:
        """No state to update."""
