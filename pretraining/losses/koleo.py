"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search", §3.3;
DINOv2 paper §4, ``dinov2/loss/koleo_loss.py``).

``L = -(1/n) * sum_i log(d_i)``, with ``d_i = ||x_i - x_nn(i)||`` the distance between the
L2-normalised vector ``x_i`` and its nearest neighbour in the batch (itself excluded).
"""

import torch
import torch.distributed as dist
from torch import nn


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo loss of one crop's features; ``x`` is ``(n, D)``, the result a scalar.

    Computed in fp32 with autocast disabled. Differences from DINOv2, all chosen so the loss stays
    finite (DINOv2 issues #143, #314, #492):

    - ``n < 2``: there is no neighbour; returns 0 (DINOv2 takes the point itself, ``d = 0``).
    - ``d_i`` is clamped below at ``eps`` instead of computing ``log(||x_i - x_nn + eps|| + eps)``. The
      value differs by ``O(eps)`` for distinct points; for exact duplicates (or a collapsed batch) the
      term is ``-log(eps)`` with zero gradient instead of an unbounded one, and in fp16 inputs it can
      no longer underflow to ``log(0)``.
    - The diagonal is excluded with ``-inf`` rather than ``-1``, so a point is never its own neighbour
      (with ``-1`` it can be, when the others are antipodal).
    """
    if x.dim() != 2:
        raise ValueError(f"Expected features of shape (n, D), got {tuple(x.shape)}.")
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = nn.functional.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.t()  # (n, D) @ (D, n) -> (n, n) cosine similarities
            dots.fill_diagonal_(float("-inf"))
            nearest = dots.argmax(dim=1)  # (n,)
        distances = torch.linalg.vector_norm(x - x[nearest], dim=-1)  # (n,)
        return -torch.log(distances.clamp_min(eps)).mean()


def koleo_loss_distributed(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo over the global batch: nearest neighbours are searched among the features of *all* ranks.

    Each rank returns ``-(1/n_local) * sum_{i local} log d_i``; with equal per-rank batches the mean over
    ranks (what DDP's gradient averaging optimises) is exactly :func:`koleo_loss` of the concatenated batch.
    Gradients flow to the other ranks' features through an autograd-aware ``all_gather`` (its backward
    sums the gradients of every rank). Falls back to :func:`koleo_loss` without a process group.
    The original computes KoLeo on the per-GPU batch only; DINOv3's ``KoLeoLossDistributed`` is the
    same idea.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return koleo_loss(x, eps)
    if x.dim() != 2:
        raise ValueError(f"Expected features of shape (n, D), got {tuple(x.shape)}.")
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(x.shape[0], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"Distributed KoLeo needs the same batch size on every rank, got {[int(s) for s in sizes]}.")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = nn.functional.normalize(x.float(), p=2, dim=-1, eps=eps)
        everyone = torch.cat(all_gather(x))  # world x (n, D) -> (world * n, D)
        n = x.shape[0]
        if everyone.shape[0] < 2:
            return x.sum() * 0.0
        rows = torch.arange(n, device=x.device)
        with torch.no_grad():
            dots = x @ everyone.t()  # (n, world * n) cosine similarities
            dots[rows, dist.get_rank() * n + rows] = float("-inf")  # never its own neighbour
            nearest = dots.argmax(dim=1)  # (n,)
        distances = torch.linalg.vector_norm(x - everyone[nearest], dim=-1)  # (n,)
        return -torch.log(distances.clamp_min(eps)).mean()
