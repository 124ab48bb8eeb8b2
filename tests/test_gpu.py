"""The model and the losses on a CUDA GPU against the CPU reference (stock transformers' Dinov2Model for the
ViT). Skipped without a GPU; `scripts/gpu_check.sh` runs them on a GPU machine."""

import pytest
import torch
import transformers

from modeling_dinov2 import Dinov2Model

from conftest import tiny_config_kwargs
from ddp_pretraining_helper import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
CUDA = "cuda"


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls and convolutions round to 10 mantissa bits: off, so fp32 on the GPU is comparable to 1e-4."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_gpu_outputs_equal_stock_transformers_on_the_cpu(tmp_path, attention):
    torch.manual_seed(0)
    stock = transformers.Dinov2Model(transformers.Dinov2Config(**tiny_config_kwargs(layerscale_value=0.7))).eval()
    stock.save_pretrained(tmp_path)
    ours = Dinov2Model.from_pretrained(tmp_path, attn_implementation=attention).eval().to(CUDA)
    pixel_values = torch.randn(4, 3, 56, 42)
    with torch.no_grad():
        expected = stock(pixel_values).last_hidden_state
        got = ours(pixel_values.to(CUDA)).last_hidden_state.cpu()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    with torch.no_grad(), torch.autocast(CUDA, dtype=torch.bfloat16):
        got_bf16 = ours(pixel_values.to(CUDA)).last_hidden_state.float().cpu()
    torch.testing.assert_close(got_bf16, expected, rtol=0, atol=0.1)


def test_gpu_packed_forward_equals_one_forward_per_size():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Model.config_class(**tiny_config_kwargs(layerscale_value=1.0))).to(CUDA).eval()
    crops = [torch.randn(4, 3, 28, 28, device=CUDA), torch.randn(8, 3, 14, 14, device=CUDA)]
    with torch.no_grad():
        model.config.packed_forward = True
        packed = model(crops)
        model.config.packed_forward = False
        per_size = model(crops)
    for a, b in zip(packed, per_size):
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=1e-5)


def test_gpu_self_distillation_losses_and_gradients_equal_the_cpus():
    torch.manual_seed(0)
    cpu_model = tiny_model()
    gpu_model = tiny_model()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to(CUDA)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(global_crops=torch.randn(4, 3, 16, 16, generator=generator),
                  local_crops=torch.randn(8, 3, 8, 8, generator=generator),
                  masks=torch.rand(4, 16, generator=generator) < 0.3)
    losses = {}
    for name, model in (("cpu", cpu_model), ("gpu", gpu_model)):
        device = next(model.parameters()).device
        output = model(**{k: v.to(device) for k, v in inputs.items()}, teacher_temp=0.04)
        output.loss.backward()
        losses[name] = output
    torch.testing.assert_close(losses["gpu"].loss.cpu(), losses["cpu"].loss, rtol=1e-5, atol=1e-6)
    for (name, p_cpu), p_gpu in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        if p_cpu.grad is not None:
            torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-4, atol=1e-6, msg=name)
