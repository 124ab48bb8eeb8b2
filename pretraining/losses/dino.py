"""DINO self-distillation loss on CLS tokens (Caron et al. 2021, Eq. 1-2; DINOv2 paper §4,
``dinov2/loss/dino_clstoken_loss.py`` and ``SSLMetaArch.forward_backward``).

Student crops are indexed ``0..G-1`` for the global crops and ``G..G+L-1`` for the local crops; the
teacher only sees the ``G`` global crops. The loss is the mean over all crossed
``(student crop, teacher crop)`` pairs that are not the same global view:
``G * (G - 1) + L * G`` pairs, i.e. 18 for 2 global and 8 local crops.
"""

import torch

# Row-wise ops over K = 65536 prototypes are memory-bound: a (600, 65536) fp32 tensor is 160 MB, and each of
# the cast, scale, log-softmax and product passes streams it through memory. In chunks of ~4 MB (16 rows) the
# passes stay in cache: the iBOT cross-entropy's forward and backward ran 6x faster on a 2-core CPU.
CHUNK_ELEMENTS = 1 << 20


def row_chunks(*tensors: torch.Tensor) -> zip:
    """Matching chunks of the rows of (n, K) tensors, each ~`CHUNK_ELEMENTS` elements (one chunk under
    torch.compile, which fuses the passes itself)."""
    rows = tensors[0].shape[0] if torch.compiler.is_compiling() else max(1, CHUNK_ELEMENTS // tensors[0].shape[-1])
    return zip(*(tensor.split(rows) for tensor in tensors))


class _SoftCrossEntropy(torch.autograd.Function):
    """Row-wise ``CE(t, s) = -<t, log_softmax(s / tau)>`` that saves only its inputs and recomputes the softmax
    in the backward, ``dCE/ds = (softmax(s / tau) * sum(t) - t) / tau``, both in row chunks: autograd through
    log_softmax would keep an fp32 (n, K) copy of the log-probabilities (160 MB for 600 masked patches x 65536
    prototypes) alive until the backward."""

    @staticmethod
    def forward(ctx, teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
        ce = [
            -torch.log_softmax(student.to(torch.float32, copy=True).div_(student_temp), dim=-1).mul_(teacher).sum(-1)
            for teacher, student in row_chunks(teacher_probs, student_logits)
        ]
        ctx.save_for_backward(teacher_probs, student_logits)
        ctx.student_temp = student_temp
        return torch.cat(ce)

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor):
        teacher_probs, student_logits = ctx.saved_tensors
        temp = ctx.student_temp
        grads = []
        for teacher, student, grad in row_chunks(teacher_probs, student_logits, grad_ce):
            probs = torch.softmax(student.to(torch.float32, copy=True).div_(temp), dim=-1)
            grad_student = probs.mul_(teacher.sum(-1, keepdim=True)).sub_(teacher).mul_((grad / temp).unsqueeze(-1))
            grads.append(grad_student.to(student_logits.dtype))
        return None, torch.cat(grads), None


def soft_cross_entropy(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """``CE(t, s) = -sum_k t_k * log_softmax(s / tau_s)_k`` over the last dimension, in fp32, in row chunks
    (see `CHUNK_ELEMENTS`), keeping no (n, K) intermediate for the backward. No gradient flows into the
    targets `t`.

    Args:
        teacher_probs: ``(..., K)`` target probabilities (no gradient).
        student_logits: ``(..., K)`` student logits.
        student_temp: Student temperature ``tau_s``.

    Returns:
        ``(...)`` cross-entropy per row.
    """
    n_prototypes = student_logits.shape[-1]
    ce = _SoftCrossEntropy.apply(teacher_probs.detach().float().reshape(-1, n_prototypes),
                                 student_logits.reshape(-1, n_prototypes), student_temp)
    return ce.view(student_logits.shape[:-1])  # (n,) -> (...)


def dino_crossed_pairs(n_global_crops: int = 2, n_local_crops: int = 8) -> list[tuple[int, int]]:
    """The ``(student_crop, teacher_crop)`` pairs that enter the DINO loss.

    Every student crop is paired with every teacher (global) crop except the same global view.
    Student crops ``0..G-1`` are the global crops and ``G..G+L-1`` the local crops.
    """
    if n_global_crops < 1 or n_local_crops < 0:
        raise ValueError(
            f"Expected n_global_crops >= 1 and n_local_crops >= 0, got {n_global_crops} and {n_local_crops}."
        )
    n_student = n_global_crops + n_local_crops
    return [(s, t) for s in range(n_student) for t in range(n_global_crops) if s != t]


def dino_loss(
    student_global_logits: torch.Tensor,
    student_local_logits: torch.Tensor | None,
    teacher_global_probs: torch.Tensor,
    student_temp: float = 0.1,
    n_global_crops: int = 2,
) -> torch.Tensor:
    """DINO loss: mean of ``CE(t_j, s_i)`` over the crossed pairs of :func:`dino_crossed_pairs`.

    ``CE`` is averaged over the batch, so for 2 global and 8 local crops
    ``L = (1/18) * [sum_{l=1..8} sum_{j=1,2} CE(t_j, s_l) + CE(t_2, s_1) + CE(t_1, s_2)]``.
    DINOv2 computes the same value as ``local / 18 + 2 * mean_2B(CE(swapped t, s_global)) / 18``.
    (With no local crops DINOv2 divides by ``2 + max(0, 1) = 3``; here the mean over the 2 pairs is used.)

    All tensors are crop-major: rows ``[c * B, (c + 1) * B)`` belong to crop ``c``, as produced by
    the collator.

    Args:
        student_global_logits: ``(G * B, K)`` student head logits of the global crops.
        student_local_logits: ``(L * B, K)`` student head logits of the local crops, or ``None``.
        teacher_global_probs: ``(G * B, K)`` teacher probabilities (after centering or Sinkhorn-Knopp)
            of the same global crops, in the same (unswapped) order.
        student_temp: Student temperature ``tau_s`` (0.1).
        n_global_crops: ``G`` (2).

    Returns:
        Scalar loss.
    """
    if teacher_global_probs.dim() != 2 or teacher_global_probs.shape[0] % n_global_crops != 0:
        raise ValueError(
            f"Expected teacher probabilities of shape ({n_global_crops} * B, K), "
            f"got {tuple(teacher_global_probs.shape)}."
        )
    n_teacher_rows, n_prototypes = teacher_global_probs.shape
    batch_size = n_teacher_rows // n_global_crops
    if student_global_logits.shape != teacher_global_probs.shape:
        raise ValueError(
            f"Expected student global logits of shape {tuple(teacher_global_probs.shape)}, "
            f"got {tuple(student_global_logits.shape)}."
        )
    student = [student_global_logits]
    n_local_crops = 0
    if student_local_logits is not None and student_local_logits.shape[0] > 0:
        if (
            student_local_logits.dim() != 2
            or student_local_logits.shape[1] != n_prototypes
            or student_local_logits.shape[0] % batch_size != 0
        ):
            raise ValueError(
                f"Expected student local logits of shape (L * {batch_size}, {n_prototypes}), "
                f"got {tuple(student_local_logits.shape)}."
            )
        student.append(student_local_logits)
        n_local_crops = student_local_logits.shape[0] // batch_size

    n_student_crops = n_global_crops + n_local_crops
    teacher_probs = teacher_global_probs.float().view(n_global_crops, batch_size, n_prototypes)  # (G*B, K) -> (G, B, K)
    # s: student crop, t: teacher crop, b: sample, k: prototype. ce[s, t] = mean_b CE(t_tb, s_sb), one student
    # crop at a time (B rows: the log-softmax stays in cache, see CHUNK_ELEMENTS)
    ce = torch.stack([
        -torch.einsum("tbk,bk->t", teacher_probs, torch.log_softmax(crop.float() / student_temp, dim=-1))
        for logits in student for crop in logits.split(batch_size)
    ]) / batch_size  # (S, G)

    pairs = ~torch.eye(n_student_crops, n_global_crops, dtype=torch.bool, device=ce.device)  # s == t: no loss term
    return ce.masked_fill(~pairs, 0.0).sum() / pairs.sum()
