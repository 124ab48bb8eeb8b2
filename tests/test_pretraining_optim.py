"""Parameter groups (layer-wise lr decay, patch-embed x0.2, weight-decay exemptions, last layer) and the
scheduler that writes lr / weight decay into them. Expected multipliers are worked out by hand for a
2-block backbone (L = 2): decay**(L + 1 - layer_id) with layer_id 0 for the embeddings, i + 1 for block i.
"""

import pytest
import torch

from ddp_pretraining_helper import tiny_model
from pretraining.optim import RecipeScheduler, build_param_groups, layer_id, no_weight_decay, parameter_multipliers
from pretraining.schedules import PretrainingSchedule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model()


def test_layer_ids():
    assert layer_id("embeddings.cls_token", 12) == 0
    assert layer_id("embeddings.patch_embeddings.projection.weight", 12) == 0
    assert layer_id("embeddings.position_embeddings", 12) == 0
    assert layer_id("encoder.layer.0.norm1.weight", 12) == 1
    assert layer_id("encoder.layer.11.mlp.fc2.bias", 12) == 12
    assert layer_id("layernorm.weight", 12) == 13


def test_multipliers_hand_values(model):
    m = parameter_multipliers(model.student, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    lr = {name: v["lr_multiplier"] for name, v in m.items()}
    # L = 2: embeddings 0.5**3, block 0 0.5**2, block 1 0.5**1, final norm and heads 1
    assert lr["backbone.embeddings.cls_token"] == pytest.approx(0.125)
    assert lr["backbone.embeddings.mask_token"] == pytest.approx(0.125)
    assert lr["backbone.embeddings.position_embeddings"] == pytest.approx(0.125)
    assert lr["backbone.embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.125 * 0.2)
    assert lr["backbone.encoder.layer.0.attention.attention.query.weight"] == pytest.approx(0.25)
    assert lr["backbone.encoder.layer.1.mlp.fc1.weight"] == pytest.approx(0.5)
    assert lr["backbone.layernorm.weight"] == 1.0
    assert lr["dino_head.mlp.0.weight"] == 1.0
    assert lr["dino_head.last_layer.parametrizations.weight.original0"] == 1.0
    wd = {name: v["wd_multiplier"] for name, v in m.items()}
    for name in ("backbone.encoder.layer.0.norm1.weight", "backbone.encoder.layer.0.mlp.fc1.bias",
                 "backbone.encoder.layer.1.layer_scale2.lambda1", "backbone.layernorm.bias", "dino_head.mlp.0.bias"):
        assert wd[name] == 0.0, name
    # the original decays the position table, the tokens and the weight-norm magnitude g
    for name in ("backbone.embeddings.position_embeddings", "backbone.embeddings.cls_token",
                 "backbone.encoder.layer.0.mlp.fc1.weight", "dino_head.last_layer.parametrizations.weight.original0"):
        assert wd[name] == 1.0, name
    last = {name for name, v in m.items() if v["is_last_layer"]}
    assert last == {"dino_head.last_layer.parametrizations.weight.original0",
                    "dino_head.last_layer.parametrizations.weight.original1"}
    assert no_weight_decay("x.norm2.weight") and not no_weight_decay("x.fc1.weight")


def test_groups_cover_every_student_parameter_once_and_no_teacher(model):
    groups = build_param_groups(model, layerwise_decay=0.9)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.student.parameters())
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert not teacher_ids & set(ids)
    keys = [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))  # fused by equal multipliers
    assert all(len(g["names"]) == len(g["params"]) for g in groups)


def test_scheduler_sets_lr_and_weight_decay_per_group(model):
    groups = build_param_groups(model, layerwise_decay=0.5)
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    schedule = PretrainingSchedule(total_steps=10, base_lr=1e-2, warmup_steps=4, min_lr=1e-4,
                                   freeze_last_layer_steps=3, weight_decay_start=0.04, weight_decay_end=0.4)
    scheduler = RecipeScheduler(optimizer, schedule)

    def check(step):
        for g in optimizer.param_groups:
            base = schedule.last_layer_lr(step) if g["is_last_layer"] else schedule.lr(step)
            assert g["lr"] == pytest.approx(base * g["lr_multiplier"])
            assert g["weight_decay"] == pytest.approx(schedule.weight_decay(step) * g["wd_multiplier"])

    check(0)
    for step in range(1, 8):
        optimizer.step()
        scheduler.step()
        check(step)
        last = [g for g in optimizer.param_groups if g["is_last_layer"]][0]
        assert (last["lr"] == 0.0) == (step < 3)  # frozen for the first 3 steps
    # hand value at step 7: the warm-up linspace(0, 1e-2, 4) covers steps 0-3, the cosine has n = 6 steps and
    # i = 7 - 4 = 3 is its middle: min + (base - min) / 2
    assert schedule.lr(7) == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2)
    # the state is the step counter: a new scheduler loaded from it continues the same curve
    state = scheduler.state_dict()
    resumed = RecipeScheduler(torch.optim.AdamW(build_param_groups(model, layerwise_decay=0.5), lr=1.0), schedule)
    resumed.load_state_dict(state)
    resumed.step()
    scheduler.step()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_scheduler_rejects_plain_groups(model):
    with pytest.raises(ValueError, match="build_param_groups"):
        RecipeScheduler(torch.optim.AdamW(model.student.parameters()), PretrainingSchedule(10, 1e-3, 2))


def test_schedule_values_hand_values():
    s = PretrainingSchedule(total_steps=100, base_lr=1e-3, warmup_steps=10, teacher_temp_warmup_steps=4)
    v = s.values(50)
    assert v["momentum_teacher"] == pytest.approx(0.996)  # cosine 0.992 -> 1, half-way
    assert v["weight_decay"] == pytest.approx(0.22)  # cosine 0.04 -> 0.4, half-way
    assert v["teacher_temp"] == pytest.approx(0.07)  # warm-up over
    assert s.teacher_temp(2) == pytest.approx(0.06)  # linspace(0.04, 0.07, 4)[2]
    assert s.lr(0) == 0.0 and s.lr(9) == pytest.approx(1e-3)
    # a warm-up longer than the run is clipped to it
    assert PretrainingSchedule(total_steps=5, base_lr=1.0, warmup_steps=50).warmup_steps == 5
