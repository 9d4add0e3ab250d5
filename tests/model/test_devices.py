"""Device, dtype and int8 weights: the options' form, what `auto` picks, absent devices as one
clear error, and a real tiny model loaded, quantized and answering (CUDA parts skip on CPU CI)."""
from __future__ import annotations

import pytest
import torch

from model.inference.devices import DeviceError, Runtime, auto_dtype, cpu_has_native_bf16, resolve_device, resolve_dtype
from model.inference.fidelity import agreement, fixed_prompts, reference_answers
from model.inference.loading import load_vlm
from model.inference.quantize import Int8Linear, quantize_weights

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI is CPU-only)")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")


def test_options_are_normalised_and_bad_ones_name_the_value(monkeypatch):
    monkeypatch.delenv("CTVQA_DEVICE", raising=False)
    assert Runtime.from_options() == Runtime("auto", "auto", "none")
    assert Runtime.from_options(" CPU ", "bf16", "INT8") == Runtime("cpu", "bfloat16", "int8")
    assert Runtime.from_options("cpu:0", "torch.float16").device == "cpu"  # what str(torch.device) gives
    monkeypatch.setenv("CTVQA_DEVICE", "cuda:1")
    monkeypatch.setenv("CTVQA_DTYPE", "float32")
    assert Runtime.from_options() == Runtime("cuda:1", "float32", "none")
    assert Runtime.from_options("cpu").device == "cpu"  # an option beats the environment
    for kwargs, named in (({"device": "gpu"}, "'gpu'"), ({"device": "cuda:x"}, "'cuda:x'"),
                          ({"dtype": "int4"}, "'int4'"), ({"quantize": "int3"}, "'int3'")):
        with pytest.raises(DeviceError, match=named):
            Runtime.from_options(**kwargs)


def test_auto_picks_float32_for_a_float32_model_and_bf16_only_where_native():
    assert resolve_device("cpu") == CPU
    assert auto_dtype(CPU, torch.float32) == torch.float32
    assert auto_dtype(CPU, None) == torch.float32
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert auto_dtype(CPU, torch.bfloat16) == native
    assert auto_dtype(CPU, torch.float32, quantize="int8") == native  # int8 kernel wants bf16 activations
    assert resolve_dtype("float16", CPU) == torch.float16  # asked for: honoured, even if slow


@cpu_only
def test_an_absent_gpu_is_one_clear_error(tiny_vlm_dir):
    for spec in ("cuda", "cuda:3"):
        with pytest.raises(DeviceError, match=rf"device '{spec}' is not available.*--device cpu"):
            resolve_device(spec)
    with pytest.raises(DeviceError, match="not available"):
        load_vlm(tiny_vlm_dir, device="cuda")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(DeviceError, match="'mps' is not available"):
            resolve_device("mps")


def test_environment_sets_device_and_dtype_of_load_vlm(tiny_vlm_dir, monkeypatch):
    monkeypatch.setenv("CTVQA_DEVICE", "cpu")
    monkeypatch.setenv("CTVQA_DTYPE", "bfloat16")
    vlm = load_vlm(tiny_vlm_dir)
    assert (vlm.device, vlm.dtype, vlm.runtime) == (CPU, torch.bfloat16, "cpu, bfloat16")
    monkeypatch.setenv("CTVQA_DTYPE", "auto")
    assert load_vlm(tiny_vlm_dir).dtype == torch.float32  # the tiny model is stored in float32


def test_int8_linear_matches_its_dequantized_weight_on_every_kernel():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    q = Int8Linear.from_linear(linear)
    assert q.int8_weight().dtype == torch.int8 and q.int8_weight().shape == (48, 64) and q.scale.shape == (48,)
    assert q.kernel == ("fbgemm" if torch.backends.quantized.engine in ("x86", "fbgemm") else "int8pack")
    assert float((q.weight - linear.weight.detach().float()).abs().max()) <= float(q.scale.max()) / 2 + 1e-6
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    x[0, 0] *= 100  # one outlier token: per-token activation scales keep the other rows exact
    expected = torch.nn.functional.linear(x.float(), q.weight, linear.bias.float())
    outputs = {}
    with torch.inference_mode():
        for kernel in ("fbgemm", "int8pack", "dequantize") if q.kernel == "fbgemm" else ("int8pack", "dequantize"):
            outputs[kernel] = Int8Linear(q.int8_weight().clone(), q.scale, linear.bias, kernel=kernel)(x)
    assert len(outputs) >= 2
    for name, out in outputs.items():
        assert out.shape == (2, 5, 48) and out.dtype == torch.bfloat16, name
        row_peak = expected.abs().amax(dim=-1, keepdim=True)
        assert float(((out.float() - expected).abs() / row_peak).max()) < 0.02, name


def test_int8_quantizes_the_language_model_only_and_keeps_answers(tiny_vlm_dir):
    reference = load_vlm(tiny_vlm_dir, device="cpu", dtype="bfloat16")
    quantized = load_vlm(tiny_vlm_dir, device="cpu", dtype="bfloat16", quantize="int8")
    assert quantized.runtime == "cpu, bfloat16, int8 weights"
    layers = [m for m in quantized.model.modules() if isinstance(m, Int8Linear)]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in reference.model.language_model.modules())
    assert len(layers) == n_linear > 0
    assert not any(isinstance(m, Int8Linear) for m in quantized.model.vision.modules())
    int8_weights = sum(m.int8_weight().numel() for m in layers)
    replaced = sum(m.weight.numel() for m in reference.model.language_model.modules() if isinstance(m, torch.nn.Linear))
    assert int8_weights == replaced and all(m.int8_weight().dtype == torch.int8 for m in layers)
    assert not any(b.dtype == torch.bfloat16 and b.dim() == 2 for m in layers for b in m.buffers())
    prompts = fixed_prompts(reference.image_size, n_images=1)
    answers = reference_answers(reference, prompts, max_new_tokens=6)
    same = agreement(reference, prompts, answers)
    assert (same.top1, same.choice) == (1.0, 1.0) and same.n_tokens == 6 * len(prompts)
    fid = agreement(quantized, prompts, answers)
    assert fid.n_closed == sum(bool(p.choices) for p in prompts)
    assert fid.top1 >= 0.9 and fid.choice >= 0.75, fid
    answer = quantized.answer(prompts[0].image, prompts[0].question, choices=prompts[0].choices, max_new_tokens=3)
    assert answer.choice in ("A", "B")


def test_quantize_refuses_unknown_modes_and_models_without_linears():
    with pytest.raises(ValueError, match="int4"):
        quantize_weights(torch.nn.Linear(4, 4), "int4", root="")
    with pytest.raises(ValueError, match="no linear layers"):
        quantize_weights(torch.nn.Sequential(torch.nn.ReLU()), "int8", root="")
    assert quantize_weights(torch.nn.Linear(4, 4), "none", root="") == 0


@needs_cuda
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_cuda_answers_in_bf16_like_the_cpu(tiny_vlm_dir, quantize):
    gpu = load_vlm(tiny_vlm_dir, device="cuda", quantize=quantize)
    assert gpu.device.type == "cuda" and gpu.dtype in (torch.bfloat16, torch.float16)
    cpu = load_vlm(tiny_vlm_dir, device="cpu", dtype="float32")
    prompts = fixed_prompts(cpu.image_size, n_images=1)
    fid = agreement(gpu, prompts, reference_answers(cpu, prompts, max_new_tokens=6))
    assert fid.top1 >= 0.9 and fid.choice >= 0.75, fid
    with pytest.raises(DeviceError, match="not available"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
