"""iBOT masked-patch loss (Zhou et al. 2022, Eq. 2; DINOv2 paper §4, ``dinov2/loss/ibot_patch_loss.py``).

``L = (1 / n_images) * sum_i (1 / |M_i|) * sum_{p in M_i} CE(t_ip, s_ip)``

where ``n_images = 2B`` counts *all* global crops: each image's loss is averaged over its own masked
patches, and images without a mask contribute 0 but still count in the denominator (as DINOv2).
"""

import torch

from .dino import soft_cross_entropy


def ibot_loss(
    student_patch_logits: torch.Tensor,
    teacher_patch_probs: torch.Tensor,
    masks: torch.Tensor,
    mask_weights: torch.Tensor | None = None,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Weighted cross-entropy between teacher and student masked patch tokens.

    Rows of the patch tensors follow ``masks.flatten().nonzero()`` (the collator's ``mask_indices``).

    Args:
        student_patch_logits: ``(M, K)`` student head logits at the masked patches.
        teacher_patch_probs: ``(M, K)`` teacher probabilities at the same patches.
        masks: ``(n_images, N)`` bool masks of the global crops; ``M == masks.sum()``.
        mask_weights: ``(M,)`` weights ``1 / |M_i|``; computed from ``masks`` when ``None``.
        student_temp: Student temperature ``tau_s`` (0.1).

    Returns:
        Scalar loss.
    """
    if masks.dim() != 2 or masks.dtype != torch.bool:
        raise ValueError(f"Expected bool masks of shape (n_images, N), got {masks.dtype} {tuple(masks.shape)}.")
    n_masked = int(masks.sum())
    if student_patch_logits.dim() != 2 or student_patch_logits.shape[0] != n_masked:
        raise ValueError(
            f"Expected student patch logits of shape ({n_masked}, K) (one row per masked patch), "
            f"got {tuple(student_patch_logits.shape)}."
        )
    if teacher_patch_probs.shape != student_patch_logits.shape:
        raise ValueError(
            f"Expected teacher patch probabilities of shape {tuple(student_patch_logits.shape)}, "
            f"got {tuple(teacher_patch_probs.shape)}."
        )
    if mask_weights is None:
        per_image = 1.0 / masks.sum(dim=-1).clamp(min=1).float()  # (n_images,)
        mask_weights = per_image.unsqueeze(-1).expand_as(masks)[masks]  # (n_images, N) -> (M,)
    elif mask_weights.shape != (n_masked,):
        raise ValueError(f"Expected mask weights of shape ({n_masked},), got {tuple(mask_weights.shape)}.")

    ce = soft_cross_entropy(teacher_patch_probs, student_patch_logits, student_temp)  # (M,)
    return (ce * mask_weights.float()).sum() / masks.shape[0]
