"""`dinov2-pretrain`: --help, the presets (the original hyperparameters), a short real run on a few hundred
Fashion-MNIST images (the loss falls; the exported backbone loads with AutoModel, with trust_remote_code
where the package is absent, and in stock transformers after conversion), export from a checkpoint,
distillation from the trained model, and pushing the backbone with its model card to a Hub server."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO_ROOT, run_python
from test_auto_and_hub import BLOCK_PACKAGE  # blocks this package's imports in a subprocess
from pretraining import builders, cli
from pretraining.collate import MultiCropCollator
from pretraining.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL
from pretraining.presets import OFFICIAL_EPOCH_LENGTH

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(), reason=f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}"
)



def run_cli(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "pretraining.cli", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_help_explains_presets_data_and_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("usage: dinov2-pretrain", "tiny", "vit_small", "vit_base", "vit_large", "vit_giant2",
                     "--train_dir", "--dataset_name", "--image_column", "--learning_rate", "--warmup_epochs",
                     "--momentum_teacher", "--teacher_temp", "--freeze_last_layer_epochs", "--layerwise_decay",
                     "--distill_from", "--model_name_or_path", "--export_hub_repo_id", "--resume_from_checkpoint",
                     "skipped_images.json", "torchrun", "teacher_entropy"):
        assert expected in text, expected


def test_presets_carry_the_original_hyperparameters():
    _, model, data, training = cli.parse_args(["--preset", "vit_small", "--train_dir", "x"])
    assert (training.learning_rate, training.max_steps, training.warmup_epochs) == (4e-3, 100 * 1250, 10)
    assert training.epoch_length == OFFICIAL_EPOCH_LENGTH == 1250
    assert (training.weight_decay, training.weight_decay_end, training.momentum_teacher) == (0.04, 0.4, 0.992)
    assert (training.warmup_teacher_temp, training.teacher_temp, training.warmup_teacher_temp_epochs) == (0.04, 0.07, 30)
    assert (training.layerwise_decay, training.patch_embed_lr_mult, training.max_grad_norm) == (0.9, 0.2, 3.0)
    assert (training.freeze_last_layer_epochs, training.min_lr, training.per_device_train_batch_size) == (1, 1e-6, 64)
    assert (model.drop_path_rate, model.layerscale_value, model.dino_out_dim, model.ibot_separate_head) == (0.3, 1e-5, 65536, False)
    assert (data.global_crops_size, data.local_crops_size, data.local_crops_number) == (224, 98, 8)
    assert data.global_crops_scale == [0.32, 1.0] and data.local_crops_scale == [0.05, 0.32]
    backbone = builders.backbone_config(model, data)
    assert (backbone.hidden_size, backbone.num_hidden_layers, backbone.num_attention_heads) == (384, 12, 6)
    assert (backbone.patch_size, backbone.image_size, backbone.interpolate_offset) == (14, 224, 0.1)
    assert training.disable_tqdm is False  # a progress bar

    _, model, data, training = cli.parse_args(["--preset", "vit_large", "--train_dir", "x"])
    assert (training.learning_rate, training.max_steps, training.warmup_epochs) == (2e-4, 500 * 1250, 80)
    assert (training.weight_decay_end, training.momentum_teacher, training.layerwise_decay) == (0.2, 0.994, 1.0)
    assert (model.drop_path_rate, model.ffn_type, model.centering) == (0.4, "swiglu", "sinkhorn_knopp")
    assert (model.dino_out_dim, model.dino_bottleneck_dim, model.ibot_separate_head, model.ibot_out_dim) == (131072, 384, True, 131072)
    assert training.per_device_train_batch_size == 32
    _, model, _, training = cli.parse_args(["--preset", "vit_giant2", "--train_dir", "x"])
    assert training.per_device_train_batch_size == 12 and model.arch == "vit_giant2"
    assert builders.backbone_config(model, _).hidden_size == 1536
    # the command line wins over the preset
    _, _, _, training = cli.parse_args(["--preset", "vit_small", "--learning_rate", "1e-3", "--train_dir", "x"])
    assert training.learning_rate == 1e-3
    _, model, data, _ = cli.parse_args(["--preset", "vit_small", "--mlp_ratio", "2", "--train_dir", "x"])
    assert builders.build_model(model, data).student.backbone.encoder.layer[0].mlp.fc1.out_features == 2 * 384


def test_attn_implementation_reaches_student_and_teacher_and_keeps_the_loss():
    losses = {}
    for implementation in ("sdpa", "eager"):
        _, model_args, data_args, _ = cli.parse_args(["--preset", "tiny", "--attn_implementation", implementation])
        torch.manual_seed(0)
        model = builders.build_model(model_args, data_args).train()
        layers = [layer for branch in (model.student, model.teacher) for layer in branch.backbone.encoder.layer]
        assert {layer.attention.config._attn_implementation for layer in layers} == {implementation}
        augmentation = builders.build_augmentation(data_args, model_args.patch_size)
        collator = MultiCropCollator(patch_size=model_args.patch_size, global_crops_size=data_args.global_crops_size,
                                         batch_transform=augmentation if data_args.batched_augmentation else None,
                                         transform=None if data_args.batched_augmentation else augmentation, seed=0)
        images = [torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
                  for i in range(4)]
        batch = collator(images)
        losses[implementation] = model(**{k: v for k, v in batch.items() if k != "skipped_images"}).loss
    torch.testing.assert_close(losses["eager"], losses["sdpa"], rtol=1e-4, atol=1e-4)


def test_bad_command_lines_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown --preset"):
        cli.main(["--preset", "vit_huge"])
    assert cli.main(["--output_dir", str(tmp_path), "--dataset_name", "fashion_mnist", "--train_dir", "x"]) == 1
    assert "exactly one of --train_dir" in capsys.readouterr().err
    assert cli.main(["--output_dir", str(tmp_path), "--train_dir", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    if not FASHION_MNIST_DIR.exists():
        pytest.skip(f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}")
    out = tmp_path_factory.mktemp("fashion") / "run"
    run_cli("--preset", "tiny", "--output_dir", str(out), "--max_train_samples", "384",
            "--per_device_train_batch_size", "32", "--max_steps", "36", "--warmup_steps", "4", "--logging_steps", "4",
            "--save_steps", "18", "--disable_tqdm", "true", "--export_transformers_dir", str(out / "stock"))
    return out


@needs_fashion_mnist
def test_real_run_loss_falls_and_export_loads_with_automodel(fashion_run):
    state = json.loads((fashion_run / "checkpoint-36" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 9
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses  # the loss falls
    logs = [entry for entry in state["log_history"] if "dino_loss" in entry]
    for part in ("dino_loss", "ibot_loss", "koleo_loss"):
        assert logs[-1][part] < logs[0][part], (part, [e[part] for e in logs])  # every part falls
    # not collapsed: the teacher's (Sinkhorn-Knopp) targets are not uniform and use more prototypes than at the start
    n_prototypes = cli.preset("tiny")["model"]["dino_out_dim"]
    assert logs[-1]["teacher_entropy"] < math.log(n_prototypes) - 0.1
    assert logs[-1]["prototype_usage"] > 0.1  # collapse: one prototype for every teacher row (usage 1 / rows)
    assert json.loads((fashion_run / "skipped_images.json").read_text()) == {}

    from transformers import AutoModel

    from modeling_dinov2 import Dinov2Model

    backbone = AutoModel.from_pretrained(fashion_run / "backbone")
    assert isinstance(backbone, Dinov2Model) and backbone.config.image_size == 28
    card = (fashion_run / "backbone" / "README.md").read_text()
    for expected in ("Training recipe", "EMA teacher", "peak learning rate", "fashion_mnist (384 images)", "tiny"):
        assert expected in card, expected
    # the exported backbone is the teacher of the final SSL checkpoint
    from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation

    full = Dinov2ForSelfDistillation.from_pretrained(fashion_run / "final")
    for key, value in full.teacher.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
    assert any(not torch.equal(value, full.student.backbone.state_dict()[key])
               for key, value in full.teacher.backbone.state_dict().items())

    x = torch.randn(2, 3, 28, 28)
    torch.save(x, fashion_run / "x.pt")
    with torch.no_grad():
        torch.save(backbone.eval()(x).pooler_output, fashion_run / "expected.pt")
    # without this package: trust_remote_code from the exported folder, and stock transformers after conversion
    code = BLOCK_PACKAGE + textwrap.dedent(f"""
        import torch, transformers
        x, expected = torch.load({str(fashion_run / 'x.pt')!r}), torch.load({str(fashion_run / 'expected.pt')!r})
        remote = transformers.AutoModel.from_pretrained({str(fashion_run / 'backbone')!r}, trust_remote_code=True).eval()
        stock = transformers.AutoModel.from_pretrained({str(fashion_run / 'stock')!r}).eval()
        assert type(stock) is transformers.Dinov2Model, type(stock)
        with torch.no_grad():
            torch.testing.assert_close(remote(x).pooler_output, expected)
            torch.testing.assert_close(stock(x).pooler_output, expected, rtol=1e-4, atol=1e-5)
        print("OK")
    """)
    assert "OK" in run_python(code)


@needs_fashion_mnist
def test_export_only_and_distillation_from_the_trained_model(fashion_run, tmp_path):
    run_cli("--export_only", "true", "--model_name_or_path", str(fashion_run / "checkpoint-18"),
            "--export_dir", str(tmp_path / "from_checkpoint"), "--output_dir", str(tmp_path))
    from modeling_dinov2 import Dinov2Model

    exported = Dinov2Model.from_pretrained(tmp_path / "from_checkpoint")
    assert "checkpoint-18" in (tmp_path / "from_checkpoint" / "README.md").read_text()

    out = tmp_path / "distilled"
    run_cli("--preset", "tiny", "--distill_from", str(fashion_run / "final"), "--hidden_size", "48",
            "--num_hidden_layers", "2", "--num_attention_heads", "2", "--output_dir", str(out),
            "--max_train_samples", "64", "--per_device_train_batch_size", "16", "--max_steps", "4",
            "--save_strategy", "no", "--disable_tqdm", "true")
    student = Dinov2Model.from_pretrained(out / "backbone")
    assert student.config.hidden_size == 48 and exported.config.hidden_size == cli.preset("tiny")["model"]["hidden_size"]
    assert "distillation from a frozen teacher" in (out / "backbone" / "README.md").read_text()


@needs_fashion_mnist
def test_a_new_run_refuses_the_output_dir_of_an_earlier_run(fashion_run, capsys):
    """Without this, `--resume_from_checkpoint last` after a crash of the new run could continue the earlier
    run's newest checkpoint."""
    assert cli.main(["--preset", "tiny", "--output_dir", str(fashion_run), "--max_steps", "2"]) == 1
    error = capsys.readouterr().err
    assert f"{fashion_run} already holds the results of an earlier run (checkpoint-18, checkpoint-36, final, " \
           "backbone, trainer_state.json)" in error
    assert "--resume_from_checkpoint last" in error and "--overwrite_output_dir true" in error
    assert (fashion_run / "checkpoint-36").is_dir()  # nothing was touched


@pytest.mark.slow
def test_torch_compile_gives_the_eager_loss_and_gradients():
    # what `--torch_compile true` does (the Trainer compiles the whole model): same loss, same gradients
    _, model_args, data_args, _ = cli.parse_args(["--preset", "tiny", "--num_hidden_layers", "1", "--hidden_size", "32"])
    torch.manual_seed(0)
    model = builders.build_model(model_args, data_args).train()
    augmentation = builders.build_augmentation(data_args, model_args.patch_size)
    collator = MultiCropCollator(patch_size=model_args.patch_size, global_crops_size=data_args.global_crops_size,
                                     batch_transform=augmentation, seed=0)
    images = [torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(8)]
    batch = {k: v for k, v in collator(images).items() if k != "skipped_images"}
    results = []
    for forward in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        loss = forward(**batch, teacher_temp=0.01).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.student.parameters() if p.grad is not None]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-4)
    assert len(compiled_grads) == len(eager_grads) > 0
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-3, atol=1e-5)


def test_overwrite_output_dir_deletes_only_the_earlier_run(tmp_path):
    for name in ("checkpoint-3", "checkpoint-12", "final", "backbone"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-notes").mkdir()  # not a checkpoint: no step number
    (tmp_path / "trainer_state.json").write_text("{}")
    (tmp_path / "my_notes.txt").write_text("keep me")
    _, _, _, training = cli.parse_args(["--output_dir", str(tmp_path), "--overwrite_output_dir", "true"])
    assert cli.prepare_output_dir(training) is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-notes", "my_notes.txt"]

    _, _, _, training = cli.parse_args(["--output_dir", str(tmp_path), "--overwrite_output_dir", "true",
                                        "--resume_from_checkpoint", "last"])
    with pytest.raises(ValueError, match="Pass one of them"):
        cli.prepare_output_dir(training)
    _, _, _, training = cli.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    with pytest.raises(ValueError, match="no complete checkpoint"):
        cli.prepare_output_dir(training)


def test_an_interrupted_run_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(training_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "prepare_output_dir", interrupted)
    assert cli.main(["--output_dir", str(tmp_path)]) == 130
    assert "interrupted; no checkpoint was written yet" in capsys.readouterr().err
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "pretraining_state.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # killed while writing it: incomplete
    assert cli.main(["--output_dir", str(tmp_path)]) == 130
    assert f"--resume_from_checkpoint last continues from {tmp_path / 'checkpoint-7'}." in capsys.readouterr().err


@needs_fashion_mnist
def test_resuming_a_finished_run_trains_nothing(tmp_path):
    """6 steps of 4-batch epochs: Trainer.train alone would run a 7th step from checkpoint-6."""
    from safetensors.torch import load_file

    run = ["--preset", "tiny", "--output_dir", str(tmp_path), "--hidden_size", "48", "--num_hidden_layers", "2",
           "--max_train_samples", "64", "--per_device_train_batch_size", "16", "--max_steps", "6",
           "--save_steps", "3", "--warmup_steps", "1", "--disable_tqdm", "true"]
    run_cli(*run)
    finished = load_file(tmp_path / "final" / "model.safetensors")
    run_cli(*run, "--resume_from_checkpoint", "last")
    assert not (tmp_path / "checkpoint-7").exists()
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 6
    resumed = load_file(tmp_path / "final" / "model.safetensors")
    assert resumed.keys() == finished.keys()
    for name in finished:
        torch.testing.assert_close(resumed[name], finished[name], rtol=0, atol=0, msg=name)


def test_push_backbone_with_model_card_to_the_hub(hub_server, tmp_path):
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
        import torch
        from ddp_pretraining_helper import tiny_model
        from pretraining.export import export_backbone
        torch.manual_seed(0)
        model = tiny_model()
        export_backbone(model, {str(tmp_path / 'export')!r}, recipe={{"peak learning rate": 0.001, "data": "unit test"}},
                        repo_id="tester/pretrained-dinov2")
        import huggingface_hub, transformers
        card = huggingface_hub.ModelCard.load("tester/pretrained-dinov2")
        assert "peak learning rate | 0.001" in card.text and "dinov2-pretrain" in card.data.tags, card.content
        files = huggingface_hub.list_repo_files("tester/pretrained-dinov2")
        assert {{"model.safetensors", "config.json", "preprocessor_config.json", "README.md"}} <= set(files), files
        loaded = transformers.AutoModel.from_pretrained("tester/pretrained-dinov2")
        for key, value in model.teacher.backbone.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        print("PUSHED")
    """)
    assert "PUSHED" in run_python(code, env=hub_server["env"])
