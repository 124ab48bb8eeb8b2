"""Losses and teacher-target normalisation: DINO, centering, Sinkhorn-Knopp, iBOT, KoLeo.

Expected values are either worked out by hand on tiny inputs (the arithmetic is in the comments) or
produced by a naive second implementation written here, following the structure of the original
DINOv2 code (loops over crops / images, no vectorisation).
"""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretraining.centering import SinkhornKnoppCentering, SoftmaxCentering, sinkhorn_knopp
from pretraining.losses import (
    dino_crossed_pairs,
    dino_loss,
    ibot_loss,
    koleo_loss,
)
from pretraining.masking import BlockMaskGenerator, sample_masks

# ----------------------------------------------------------------------------------------------
# DINO
# ----------------------------------------------------------------------------------------------


def test_dino_crossed_pairs():
    pairs = dino_crossed_pairs(2, 8)
    assert len(pairs) == 18  # 2 * 1 global-global + 8 * 2 local-global
    assert (0, 0) not in pairs and (1, 1) not in pairs  # never the same global view
    assert (0, 1) in pairs and (1, 0) in pairs
    assert all((local, t) in pairs for local in range(2, 10) for t in (0, 1))
    assert dino_crossed_pairs(2, 0) == [(0, 1), (1, 0)]
    assert len(dino_crossed_pairs(3, 4)) == 3 * 2 + 4 * 3


def test_dino_loss_hand_values():
    # B = 1, K = 2, 2 global + 1 local crop, student temperature 0.5.
    # Student logits / 0.5: s0 = [0, 0] -> log p = [-ln 2, -ln 2]; s1 = [ln 3, 0] -> p = [3/4, 1/4];
    # local = [0, ln 3] -> p = [1/4, 3/4]. Teacher t0 = [1, 0], t1 = [1/2, 1/2].
    tau = 0.5
    ln3 = math.log(3.0)
    s_global = torch.tensor([[0.0, 0.0], [ln3 * tau, 0.0]])
    s_local = torch.tensor([[0.0, ln3 * tau]])
    t_global = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # Pairs (s0,t1), (s1,t0), (l,t0), (l,t1):
    #   CE(t1, s0) = ln 2;  CE(t0, s1) = -ln(3/4);  CE(t0, l) = -ln(1/4);  CE(t1, l) = -(ln(1/4) + ln(3/4)) / 2
    expected = (math.log(2) - math.log(0.75) - math.log(0.25) - 0.5 * (math.log(0.25) + math.log(0.75))) / 4
    got = dino_loss(s_global, s_local, t_global, student_temp=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Without local crops only the two crossed global pairs remain.
    expected_global = (math.log(2) - math.log(0.75)) / 2
    assert dino_loss(s_global, None, t_global, student_temp=tau).item() == pytest.approx(expected_global, rel=1e-6)


def naive_dino_loss_like_original(s_global, s_local, t_global, student_temp, n_local):
    """DINOv2 meta-arch composition: local terms / 18 + 2 * mean CE(swapped teacher, student global) / 18."""

    def dino_clstoken_loss(student_list, teacher_list):
        total = 0.0
        for s in student_list:
            lsm = torch.log_softmax(s / student_temp, dim=-1)
            for t in teacher_list:
                total -= torch.sum(t * lsm, dim=-1).mean()
        return total

    n_terms = 2 * 1 + 2 * n_local
    t0, t1 = t_global.chunk(2)
    teacher_list = [t0, t1]
    local = dino_clstoken_loss(s_local.chunk(n_local), teacher_list) / n_terms
    swapped = torch.cat([t1, t0])
    glob = dino_clstoken_loss([s_global], [swapped]) * 2 / n_terms
    return local + glob


def test_dino_loss_matches_original_composition():
    torch.manual_seed(0)
    B, K, n_local = 3, 11, 8
    s_global, s_local = torch.randn(2 * B, K), torch.randn(n_local * B, K)
    t_global = torch.softmax(torch.randn(2 * B, K) / 0.3, dim=-1)
    expected = naive_dino_loss_like_original(s_global, s_local, t_global, 0.1, n_local)
    torch.testing.assert_close(dino_loss(s_global, s_local, t_global, student_temp=0.1), expected)


def test_dino_loss_compiles_to_one_graph():
    # `--torch_compile true` compiles the whole model; the crossed-pairs mask once was an in-place fill on a view,
    # which torch.compile cannot functionalize
    torch.manual_seed(0)
    student_global, student_local = torch.randn(2 * 4, 16), torch.randn(3 * 4, 16)
    teacher = torch.softmax(torch.randn(2 * 4, 16) / 0.04, dim=-1)
    compiled = torch.compile(dino_loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(student_global, student_local, teacher, student_temp=0.1),
                               dino_loss(student_global, student_local, teacher, student_temp=0.1))


def test_dino_loss_bad_shapes():
    with pytest.raises(ValueError, match="teacher"):
        dino_loss(torch.randn(4, 5), None, torch.randn(3, 5))
    with pytest.raises(ValueError, match="local"):
        dino_loss(torch.randn(4, 5), torch.randn(3, 5), torch.randn(4, 5))


# ----------------------------------------------------------------------------------------------
# Softmax centering
# ----------------------------------------------------------------------------------------------


def test_centering_probs_and_update_hand_values():
    centering = SoftmaxCentering(num_prototypes=2, momentum=0.9)
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # center 0, tau 1: softmax([1, 0]) = [e/(e+1), 1/(e+1)]
    e = math.e
    torch.testing.assert_close(centering(z, 1.0)[0], torch.tensor([e / (e + 1), 1 / (e + 1)]))
    # forward never changes the center
    torch.testing.assert_close(centering.center, torch.zeros(1, 2))
    centering.update(z)
    # mean(z) = [2, 0] -> c = 0.9 * 0 + 0.1 * [2, 0] = [0.2, 0]
    torch.testing.assert_close(centering.center, torch.tensor([[0.2, 0.0]]))
    # tau 0.5: softmax(([1, 0] - [0.2, 0]) / 0.5) = softmax([1.6, 0])
    e16 = math.exp(1.6)
    torch.testing.assert_close(centering(z, 0.5)[0], torch.tensor([e16 / (e16 + 1), 1 / (e16 + 1)]))
    centering.update(torch.tensor([[0.0, 1.0]]))
    # c = 0.9 * [0.2, 0] + 0.1 * [0, 1] = [0.18, 0.1]
    torch.testing.assert_close(centering.center, torch.tensor([[0.18, 0.1]]))


class LazyCenterLikeOriginal:
    """DINOv2's protocol: `softmax_center_teacher` first applies the update registered at the previous
    step, then `update_center` registers this step's batch mean for later."""

    def __init__(self, k, m=0.9):
        self.center, self.m, self.pending = torch.zeros(1, k), m, None

    def softmax_center_teacher(self, z, temp):
        if self.pending is not None:
            self.center = self.center * self.m + self.pending * (1 - self.m)
            self.pending = None
        return torch.softmax((z - self.center) / temp, dim=-1)

    def update_center(self, z):
        self.pending = z.sum(0, keepdim=True) / len(z)


def test_centering_reproduces_lazy_update_ordering():
    torch.manual_seed(0)
    ours, lazy = SoftmaxCentering(7), LazyCenterLikeOriginal(7)
    zero_center_probs = None
    for step in range(4):
        z = torch.randn(5, 7) * 3 + step
        temp = 0.04 + 0.01 * step
        probs = ours(z, temp)  # targets first ...
        ours.update(z)  # ... then the state update: step t uses the center of steps <= t - 1
        torch.testing.assert_close(probs, lazy.softmax_center_teacher(z, temp))
        lazy.update_center(z)
        if step == 0:
            zero_center_probs = torch.softmax(z / temp, dim=-1)
            torch.testing.assert_close(probs, zero_center_probs)  # the first step uses c = 0


# ----------------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# ----------------------------------------------------------------------------------------------


def naive_sinkhorn_like_original(z, temp, n_iterations=3):
    """Single-process DINOv2 `sinkhorn_knopp_teacher` (no max subtraction)."""
    q = torch.exp(z.float() / temp).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def test_sinkhorn_single_process_marginals_and_reference():
    torch.manual_seed(0)
    B, K = 12, 5
    z = torch.randn(B, K)
    q = sinkhorn_knopp(z, teacher_temp=0.1)
    assert q.shape == (B, K) and q.dtype == torch.float32
    torch.testing.assert_close(q, naive_sinkhorn_like_original(z, 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B))  # each sample's target sums to 1
    # With enough iterations every prototype gets the same total mass B / K.
    q_converged = sinkhorn_knopp(z, teacher_temp=0.1, n_iterations=200)
    torch.testing.assert_close(q_converged.sum(dim=0), torch.full((K,), B / K), rtol=1e-4, atol=1e-4)
    # Same interface as softmax centering, stateless.
    torch.testing.assert_close(SinkhornKnoppCentering()(z, 0.1), q)


def test_sinkhorn_large_logits_stay_finite():
    # exp(5 / 0.04) overflows fp32 without the max subtraction.
    z = torch.tensor([[5.0, -5.0, 0.0], [4.0, 5.0, -1.0]])
    assert torch.isfinite(sinkhorn_knopp(z, 0.04)).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world_size, port, chunks, center_chunks, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        q = sinkhorn_knopp(chunks[rank], teacher_temp=0.1)
        centering = SoftmaxCentering(chunks[rank].shape[1], momentum=0.9)
        centering.update(center_chunks[rank])
        torch.save({"q": q, "center": centering.center}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_and_center_two_process_gloo_equal_single_process(tmp_path):
    torch.manual_seed(0)
    K = 6
    z = torch.randn(8, K)
    # Unequal split (3 + 5 rows), as for iBOT where ranks hold different numbers of masked patches.
    chunks = [z[:3], z[3:]]
    center_input = torch.randn(7, K)
    center_chunks = [center_input[:2], center_input[2:]]
    mp.spawn(_distributed_worker, args=(2, _free_port(), chunks, center_chunks, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    expected_q = sinkhorn_knopp(z, teacher_temp=0.1)  # one process, concatenated batch
    torch.testing.assert_close(torch.cat([r["q"] for r in results]), expected_q, rtol=1e-5, atol=1e-6)
    expected_center = 0.1 * center_input.mean(dim=0, keepdim=True)  # c = 0.9 * 0 + 0.1 * global mean
    for r in results:
        torch.testing.assert_close(r["center"], expected_center)


# ----------------------------------------------------------------------------------------------
# iBOT
# ----------------------------------------------------------------------------------------------


def naive_ibot_per_image(student_full, teacher_full, masks, student_temp):
    """Loop over images: mean CE over each image's masked patches, summed, divided by all images."""
    total = 0.0
    for i in range(masks.shape[0]):
        idx = masks[i].nonzero().flatten()
        if len(idx) == 0:
            continue  # contributes 0 but still counts in the denominator
        lsm = torch.log_softmax(student_full[i, idx] / student_temp, dim=-1)
        total = total + (-(teacher_full[i, idx] * lsm).sum(-1)).mean()
    return total / masks.shape[0]


def test_ibot_weighting_matches_per_image_loop():
    torch.manual_seed(0)
    n_images, N, K = 8, 16, 9
    batch = sample_masks(n_images, BlockMaskGenerator(4), torch.Generator().manual_seed(1))
    masks = batch.masks
    assert 0 < (masks.sum(1) > 0).sum() < n_images  # some images unmasked
    student_full = torch.randn(n_images, N, K)
    teacher_full = torch.softmax(torch.randn(n_images, N, K), dim=-1)
    student = student_full.flatten(0, 1)[batch.mask_indices]  # (n_images * N, K) -> (M, K)
    teacher = teacher_full.flatten(0, 1)[batch.mask_indices]
    expected = naive_ibot_per_image(student_full, teacher_full, masks, 0.1)
    torch.testing.assert_close(ibot_loss(student, teacher, masks, batch.mask_weights, student_temp=0.1), expected)
    torch.testing.assert_close(ibot_loss(student, teacher, masks, student_temp=0.1), expected)  # weights from masks


def test_ibot_hand_value():
    # 2 images, 2 patches, K = 2, tau 1. Image 0 masks both patches, image 1 none.
    # Student logits [0, 0] -> log p = -ln 2 for both patches; teacher one-hot -> CE = ln 2 per patch.
    # Image 0: mean CE = ln 2; image 1: 0. Loss = ln 2 / 2 (two images in the denominator).
    masks = torch.tensor([[True, True], [False, False]])
    loss = ibot_loss(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), masks, student_temp=1.0)
    assert loss.item() == pytest.approx(math.log(2) / 2)


@pytest.mark.parametrize("rows, prototypes", [(5, 7), (70, 40_000)], ids=["one chunk", "several chunks"])
def test_soft_cross_entropy_and_its_gradient_match_log_softmax_in_float64(rows, prototypes):
    """The chunked autograd function (saves no (n, K) log-probabilities) against plain autograd through
    log_softmax in float64, with targets whose rows do not sum to 1 and a weighted sum of the rows."""
    from pretraining.losses import soft_cross_entropy  # 70 x 40,000: chunks of 26 rows (CHUNK_ELEMENTS = 2^20)
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(rows, prototypes, generator=generator)
    targets = torch.softmax(torch.randn(rows, prototypes, generator=generator) / 0.04, dim=-1)
    targets[0] *= 0.5  # a partial target row: the formula must not assume sum(t) = 1
    weights = torch.randn(rows, generator=generator)
    reference_logits = logits.double().requires_grad_()
    reference = -(targets.double() * torch.log_softmax(reference_logits / 0.1, dim=-1)).sum(-1)
    (reference * weights.double()).sum().backward()
    ours_logits = logits.clone().requires_grad_()
    ours = soft_cross_entropy(targets, ours_logits, 0.1)
    (ours * weights).sum().backward()
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ours_logits.grad.double(), reference_logits.grad, rtol=1e-5, atol=1e-7)


def test_ibot_bad_shapes():
    masks = torch.tensor([[True, False], [True, True]])
    with pytest.raises(ValueError, match="one row per masked patch"):
        ibot_loss(torch.zeros(2, 4), torch.zeros(2, 4), masks)
    with pytest.raises(ValueError, match="bool masks"):
        ibot_loss(torch.zeros(3, 4), torch.zeros(3, 4), masks.long())


# ----------------------------------------------------------------------------------------------
# KoLeo
# ----------------------------------------------------------------------------------------------


def test_koleo_hand_values_three_points():
    # After L2 normalisation the points are at 0, 60 and 180 degrees on the unit circle.
    # Nearest neighbours: 0deg <-> 60deg (chord 2 sin 30deg = 1), 180deg -> 60deg (chord 2 sin 60deg = sqrt 3).
    # L = -(ln 1 + ln 1 + ln sqrt 3) / 3 = -ln(3) / 6.
    x = torch.tensor([[2.0, 0.0], [1.5, 1.5 * math.sqrt(3)], [-0.5, 0.0]])
    assert koleo_loss(x).item() == pytest.approx(-math.log(3) / 6, rel=1e-5)


def naive_koleo_like_original(x, eps=1e-8):
    x = torch.nn.functional.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    dots.view(-1)[:: x.shape[0] + 1].fill_(-1)
    nn_idx = dots.argmax(dim=1)
    d = torch.nn.PairwiseDistance(2, eps=eps)(x, x[nn_idx])
    return -torch.log(d + eps).mean()


def test_koleo_matches_original_on_distinct_points():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    torch.testing.assert_close(koleo_loss(x), naive_koleo_like_original(x), rtol=1e-5, atol=1e-5)


def test_koleo_finite_on_batch_of_one_and_duplicates():
    x = torch.randn(1, 8, requires_grad=True)
    assert koleo_loss(x).item() == 0.0  # documented choice: no neighbour -> 0
    dup = torch.randn(1, 8).repeat(4, 1).requires_grad_(True)  # fully collapsed batch
    loss = koleo_loss(dup)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-5)
    half = torch.cat([dup.detach()[:2], torch.randn(2, 8)]).half().requires_grad_(True)  # fp16 input
    loss = koleo_loss(half)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(half.grad).all()


