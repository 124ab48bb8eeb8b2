"""`Dinov2ForSelfDistillation`: teacher copy / freezing / eval mode, the loss composition against a naive
per-crop reference built from the original's description, center updates, the EMA formula, saving and
loading, continued pretraining from modeling_dinov2 and stock transformers checkpoints, and distillation.
"""

import math

import pytest
import torch
from safetensors.torch import load_file

from ddp_pretraining_helper import GLOBAL, LOCAL, PATCH, tiny_model
from modeling_dinov2 import Dinov2Config, Dinov2Model
from pretraining.configuration_self_distillation import Dinov2SelfDistillationConfig
from pretraining.masking import BlockMaskGenerator, sample_masks
from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation

N_PATCHES = (GLOBAL // PATCH) ** 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(batch_size=3, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = sample_masks(2 * batch_size, BlockMaskGenerator(GLOBAL // PATCH), g)
    return dict(
        global_crops=torch.randn(2 * batch_size, 3, GLOBAL, GLOBAL, generator=g),
        local_crops=torch.randn(n_local * batch_size, 3, LOCAL, LOCAL, generator=g),
        masks=masks.masks, mask_indices=masks.mask_indices, mask_weights=masks.mask_weights,

    )


def branches_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_teacher_is_a_frozen_eval_copy_of_the_student():
    torch.manual_seed(0)
    model = tiny_model(drop_path_rate=0.2)
    assert branches_equal(model.student, model.teacher)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())  # no drop path in the teacher
    out = model(**make_batch())
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    # every student parameter takes part (DDP needs no unused-parameter search)
    missing = [n for n, p in model.student.named_parameters() if p.grad is None]
    assert missing == []


def naive_soft_ce(teacher_probs, student_logits, temp):
    return -(teacher_probs * torch.log_softmax(student_logits / temp, dim=-1)).sum(-1)


def naive_koleo(x):
    x = torch.nn.functional.normalize(x, dim=-1)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    return -torch.log(dist.min(dim=1).values).mean()


def test_loss_matches_naive_per_crop_reference():
    """DINO over the 18-style crossed pairs, iBOT per image, KoLeo per global crop, weights 1 / 1 / 0.1."""
    torch.manual_seed(0)
    model = tiny_model().train()
    batch = make_batch(batch_size=3, n_local=2)
    temp_t, temp_s, B = 0.05, model.config.student_temp, 3
    out = model(**batch, teacher_temp=temp_t)

    with torch.no_grad():
        teacher = model.teacher
        t_out = teacher.backbone(batch["global_crops"])
        t_logits = teacher.dino_head(t_out.pooler_output)
        t_probs = torch.softmax(t_logits / temp_t, dim=-1)  # the first step uses a zero center
        s_global = model.student.backbone(batch["global_crops"], bool_masked_pos=batch["masks"])
        s_local = model.student.backbone(batch["local_crops"])
        s_cls = torch.cat([s_global.pooler_output, s_local.pooler_output])  # crops: g0, g1, l0, l1 (each B rows)
        s_logits = model.student.dino_head(s_cls)
        crops = s_logits.split(B)
        teacher_crops = t_probs.split(B)
        terms = [naive_soft_ce(teacher_crops[t], crops[s], temp_s).mean()
                 for s in range(4) for t in range(2) if s != t]
        assert len(terms) == 2 * 1 + 2 * 2
        dino = sum(terms) / len(terms)

        masks = batch["masks"]
        ibot_terms = []
        for i in range(2 * B):
            idx = masks[i].nonzero().flatten()
            if len(idx) == 0:
                ibot_terms.append(torch.tensor(0.0))
                continue
            t_patch = torch.softmax(teacher.dino_head(t_out.patch_tokens[i, idx]) / temp_t, dim=-1)
            s_patch = model.student.dino_head(s_global.patch_tokens[i, idx])
            ibot_terms.append(naive_soft_ce(t_patch, s_patch, temp_s).mean())
        ibot = sum(ibot_terms) / (2 * B)
        koleo = naive_koleo(s_global.pooler_output[:B]) + naive_koleo(s_global.pooler_output[B:])

    torch.testing.assert_close(out.dino_loss, dino, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.ibot_loss, ibot, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.koleo_loss, koleo, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss.detach(), dino + ibot + 0.1 * koleo, rtol=1e-5, atol=1e-5)
    # the centers moved to 0.1 * the teacher's batch mean (momentum 0.9 from 0), in training mode only
    torch.testing.assert_close(model.dino_centering.center, 0.1 * t_logits.mean(0, keepdim=True))
    model.eval()
    center = model.dino_centering.center.clone()
    model(**batch)
    assert torch.equal(model.dino_centering.center, center)


def test_diagnostics_hand_values():
    torch.manual_seed(0)
    model = tiny_model().eval()
    out = model(**make_batch())
    assert 0 < out.teacher_entropy <= math.log(model.config.dino_out_dim) + 1e-5
    assert 0 < out.prototype_usage <= 1


def test_ema_update_formula():
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student = model.student.state_dict()
    model.update_ema(0.75)
    for key, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, 0.75 * before[key] + 0.25 * student[key])
    snapshot = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.update_ema(1.0)  # momentum 1: the teacher does not move
    assert all(torch.equal(v, snapshot[k]) for k, v in model.teacher.state_dict().items())


def test_save_load_round_trip_with_centers(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(ibot_separate_head=True, centering="softmax_centering").train()
    model(**make_batch())  # moves the centers
    model.update_ema(0.5)
    model.save_pretrained(tmp_path)
    files = load_file(tmp_path / "model.safetensors")
    # what Trainer's resume does: a raw load_state_dict of the file must match every key
    assert set(files) == set(model.state_dict())
    loaded = Dinov2ForSelfDistillation.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert loaded.config.ibot_separate_head and not loaded.teacher.training


def test_sinkhorn_and_separate_head_variant_trains():
    torch.manual_seed(0)
    model = tiny_model(centering="sinkhorn_knopp", ibot_separate_head=True, ibot_out_dim=16).train()
    out = model(**make_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.student.parameters())
    assert "ibot_head" in model.teacher


def test_forward_without_masks_or_local_crops():
    torch.manual_seed(0)
    model = tiny_model().train()
    batch = make_batch()
    out = model(global_crops=batch["global_crops"])
    assert out.ibot_loss == 0 and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="2B"):
        model(global_crops=batch["global_crops"][:3])
    # masks made for another patch size (a collator left at its default patch_size=14, say)
    wrong = torch.zeros(batch["global_crops"].shape[0], 4 * N_PATCHES, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"hold {4 * N_PATCHES} patches per global crop, but .* into {N_PATCHES} "
                                         rf"patches of {PATCH} px: build the MultiCropCollator with patch_size={PATCH}"):
        model(global_crops=batch["global_crops"], masks=wrong)


def test_continued_pretraining_from_modeling_dinov2_and_stock_checkpoints(tmp_path):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH, image_size=GLOBAL)
    ours = Dinov2Model(config)
    ours.save_pretrained(tmp_path / "ours")
    model = Dinov2ForSelfDistillation.from_backbone(str(tmp_path / "ours"), backbone_overrides={"drop_path_rate": 0.3},
                                                    dino_out_dim=16, dino_hidden_dim=16, dino_bottleneck_dim=8)
    for key, value in ours.state_dict().items():
        assert torch.equal(model.student.backbone.state_dict()[key], value)
        assert torch.equal(model.teacher.backbone.state_dict()[key], value)
    assert model.config.backbone_config.drop_path_rate == 0.3

    from transformers import Dinov2Config as StockConfig
    from transformers import Dinov2Model as StockModel

    stock = StockModel(StockConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH,
                                   image_size=GLOBAL, intermediate_size=128)).eval()
    stock.save_pretrained(tmp_path / "stock")
    model = Dinov2ForSelfDistillation.from_backbone(str(tmp_path / "stock"), dino_out_dim=16, dino_hidden_dim=16,
                                                    dino_bottleneck_dim=8).eval()
    x = torch.randn(2, 3, GLOBAL, GLOBAL)
    with torch.no_grad():
        torch.testing.assert_close(model.teacher.backbone(x).pooler_output, stock(x).pooler_output, rtol=1e-4, atol=1e-5)


def test_distillation_from_a_frozen_teacher(tmp_path):
    torch.manual_seed(0)
    big = tiny_model()
    with torch.no_grad():
        big.teacher.backbone.embeddings.cls_token.add_(1.0)  # make the teacher distinguishable from its student
    big.save_pretrained(tmp_path / "big")
    student_config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, patch_size=PATCH,
                                  image_size=GLOBAL)
    model = Dinov2ForSelfDistillation.for_distillation(str(tmp_path / "big"), student_config).train()
    assert model.config.distillation and model.config.teacher_backbone_config.hidden_size == 32
    assert branches_equal(model.teacher, big.teacher)
    assert branches_equal(model.student_ema, model.student)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(not p.requires_grad for p in model.student_ema.parameters())
    assert not model.teacher.training and not model.student_ema.training

    seen = []
    hook = model.student.backbone.embeddings.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    out = model(**make_batch())
    hook.remove()
    assert seen[0] is not None and not seen[0].any()  # the student is not masked ...
    assert out.ibot_loss > 0  # ... but iBOT still compares the masked positions
    out.loss.backward()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    ema_before = {k: v.clone() for k, v in model.student_ema.state_dict().items()}
    model.update_ema(0.5)  # updates the student EMA, never the frozen teacher
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())
    assert not all(torch.equal(v, ema_before[k]) for k, v in model.student_ema.state_dict().items())
    assert model.exported_branch() is model.student_ema


def test_config_errors():
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH, image_size=GLOBAL)
    with pytest.raises(ValueError, match="centering"):
        Dinov2SelfDistillationConfig(backbone_config=backbone, centering="softmax")
    # configs saved before the rename say "centering"
    assert Dinov2SelfDistillationConfig(backbone_config=backbone, centering="centering").centering == "softmax_centering"
    with pytest.raises(ValueError, match="teacher_backbone_config"):
        Dinov2SelfDistillationConfig(backbone_config=backbone, distillation=True)
    other = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=GLOBAL)
    with pytest.raises(ValueError, match="patch size"):
        Dinov2SelfDistillationConfig(backbone_config=backbone, teacher_backbone_config=other, distillation=True)
