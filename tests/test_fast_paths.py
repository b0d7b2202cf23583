"""The CPU training fast paths, hash dropout (`trainer.models.dropout`) and packed rows
(`trainer.models.career.Packing`), each against the computation it replaces; and the precision `auto`
picks on a CPU.

- hash dropout drops at the asked rate, scales kept elements by 1/(1-p), is decided by torch's
  generator (same seed, same mask; another seed, another mask), does not depend on how a call is
  cut into thread chunks, and its gradient is the same mask; bfloat16 rounds as torch does;
- attention with hash dropout is SDPA's math: equal to SDPA at p = 0, and at p > 0 equal to the
  weights times the mask the kernel drew;
- packed training (real positions only) gives the padded model's log-probabilities and
  gradients; inference keeps the padded layout;
- a `torch.compile`d model gives the eager model's loss and gradients;
- without a C compiler the kernel is unavailable and dropout falls back to torch's;
  `hash_dropout=False` gives torch's dropout masks;
- `precision: auto` is bf16-autocast on a CPU with native bf16 flags, fp32 on one without.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import BF16_CPU, FP32_CPU
from test_model import SIZES, make_batch

from trainer.accelerator import cpu_bf16_flags
from trainer.config import TrainConfig
from trainer.models import dropout as hash_dropout
from trainer.models.career import Packing, attention, build_model

#: Tests of the kernel itself; the others (packing, compilation, the fallback without a compiler,
#: precision) run on every machine.
needs_kernel = pytest.mark.skipif(
    hash_dropout._library() is None, reason="no C compiler: the hash kernel cannot be built"
)


@needs_kernel
def test_rate_scale_and_seeding():
    x = torch.randn(1000, 1000)
    torch.manual_seed(0)
    a = hash_dropout.dropout(x, 0.1)
    torch.manual_seed(0)
    b = hash_dropout.dropout(x, 0.1)
    c = hash_dropout.dropout(x, 0.1)  # the generator moved on: another mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = a != 0
    # 1e6 Bernoulli(0.9) draws: the kept share is within 5 standard deviations (3e-4) of 0.9.
    assert abs(kept.float().mean().item() - 0.9) < 5 * math.sqrt(0.09 / 1e6)
    torch.testing.assert_close(a[kept], x[kept] / 0.9)
    # Neighbouring elements are not correlated (a counter hash with a poor mixer would be).
    flat = kept.flatten().float()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01
    assert torch.equal(hash_dropout.dropout(x, 0.1, training=False), x)
    assert torch.equal(hash_dropout.dropout(x, 0.0), x)


@needs_kernel
def test_the_mask_does_not_depend_on_thread_chunks():
    x = torch.randn(3 * hash_dropout.CHUNK_MIN + 7)
    seed = torch.tensor(12345)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = hash_dropout._hash_dropout(x, seed, 0.25)
        torch.set_num_threads(3)
        three = hash_dropout._hash_dropout(x, seed, 0.25)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)
    assert torch.equal(one != 0, hash_dropout.mask(x.shape, 0.25, 12345))


@needs_kernel
def test_gradient_is_the_same_mask():
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(5)
    y = hash_dropout.dropout(x, 0.3)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    keep = y.detach() != 0
    torch.testing.assert_close(
        x.grad, torch.where(keep, upstream / 0.7, torch.zeros_like(upstream))
    )


@needs_kernel
def test_bfloat16_matches_torch_rounding():
    x = torch.randn(4096, dtype=torch.float32).to(torch.bfloat16)
    torch.manual_seed(3)
    y = hash_dropout.dropout(x, 0.2)
    keep = y != 0
    assert y.dtype == torch.bfloat16
    assert torch.equal(y[keep], (x[keep].float() * (1 / 0.8)).to(torch.bfloat16))


@needs_kernel
def test_a_gpu_or_integer_tensor_is_not_served():
    assert not hash_dropout.applies(torch.ones(3, dtype=torch.float64))
    assert not hash_dropout.applies(torch.ones(3, device="meta"))
    assert hash_dropout.applies(torch.ones(3))


@needs_kernel
@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_hash_dropout_is_sdpa_math(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 3, 7, 16, generator=g) for _ in range(3))
    mask = None if causal else torch.rand(5, 1, 7, 7, generator=g) > 0.3
    if mask is not None:
        mask |= torch.eye(7, dtype=torch.bool)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(attention(q, k, v, mask, 0.0), reference)
    # With dropout: softmax weights times the kernel's mask / (1 - p), then the values.
    torch.manual_seed(9)
    seed = int(hash_dropout.draw_seed())
    torch.manual_seed(9)
    out = attention(q, k, v, mask, 0.2)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril() if causal else mask
    scores = (q @ k.transpose(-1, -2)) / 4.0
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    keep = hash_dropout.mask(weights.shape, 0.2, seed)
    torch.testing.assert_close(out, (weights * keep / 0.8) @ v)


def test_packed_training_equals_the_padded_model():
    torch.manual_seed(4)
    model = build_model(SIZES, "small", dropout=0.0)
    batch = make_batch(B=4, T=9, seed=2, lengths=[9, 3, 6, 1])
    padded = {k: v for k, v in batch.items() if k != "lengths"}  # no lengths: no packing
    model.train()
    assert model._packing(batch) is not None and model._packing(padded) is None
    results = []
    for b in (batch, padded):
        model.zero_grad(set_to_none=True)
        nll, count = model.nll(b)
        (nll / count).backward()
        results.append(
            (model.token_log_probs(b), {n: p.grad.clone() for n, p in model.named_parameters()})
        )
    (lp_packed, grads_packed), (lp_padded, grads_padded) = results
    torch.testing.assert_close(lp_packed, lp_padded, rtol=1e-5, atol=1e-5)
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.eval()
    assert model._packing(batch) is None


def test_packing_round_trip():
    lengths = torch.tensor([3, 1, 4])
    packing = Packing.of(lengths, 4)
    x = torch.arange(12.0).view(3, 4, 1)
    packed = packing.pack(x)
    assert packed.flatten().tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    again = packing.pad(packed)
    real = torch.arange(4) < lengths[:, None]
    assert torch.equal(again[real], x[real]) and torch.all(again[~real] == 0)


@pytest.mark.slow  # inductor compiles the forward and backward: about a minute with a cold cache
def test_compiled_model_gives_the_eager_loss():
    """Tiny preset, packed rows: the compiled model's loss and gradients are the eager model's
    to float32 tolerance (rtol 1e-4 on the loss, 1e-3 on gradients). Without dropout, since
    inductor draws random numbers (here: the hash seeds) from its own generator; with dropout
    the compiled model still drops (its training loss differs from the evaluation loss)."""
    torch.manual_seed(1)
    model = build_model(SIZES, "tiny", dropout=0.0).train()
    compiled = torch.compile(model.nll, dynamic=True)
    batch = make_batch(B=3, T=7, seed=1, lengths=[7, 4, 2])
    results = []
    for run in (model.nll, compiled):
        model.zero_grad(set_to_none=True)
        nll, count = run(batch)
        (nll / count).backward()
        results.append((nll.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, eager_grads), (comp, comp_grads) = results
    torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-4)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(comp_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    for block in model.blocks:
        block.attn_dropout = 0.5
        block.dropout.p = block.ff[2].p = 0.5
    dropped = compiled(batch)[0]
    model.eval()
    assert torch.isfinite(dropped) and not torch.isclose(dropped, model.nll(batch)[0])


def test_the_kernel_check_is_a_constant_to_the_compiler():
    """`hash_dropout.available` carries the mark `torch.compiler.assume_constant_result` sets
    (set by hand: importing the decorator imports torch._dynamo, 1.2 s at every process start);
    the decorator still sets that mark and nothing else, and the compiler folds the call."""
    probe = torch.compiler.assume_constant_result(lambda: True)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    assert vars(hash_dropout.available) == vars(probe) | vars(hash_dropout.available)
    assert hash_dropout.available._dynamo_marked_constant is True
    import subprocess
    import sys

    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, trainer.models.career, cluster.cli; print('torch._dynamo' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert fresh.stdout.strip() == "False"  # (the command line starts without the compiler)


def test_without_a_compiler_dropout_falls_back_to_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("CAREER_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    # The uncached function: built afresh, with the missing compiler.
    monkeypatch.setattr(hash_dropout, "_library", hash_dropout._library.__wrapped__)
    assert hash_dropout._library() is None
    assert "torch's dropout" in hash_dropout.kernel_status()
    x = torch.ones(1000)
    assert not hash_dropout.applies(x)
    y = hash_dropout.dropout(x, 0.5)  # torch's own: still dropout
    assert 0 < int((y == 0).sum()) < 1000 and not list((tmp_path / "cache").glob("*.so"))


def test_precision_auto_is_bf16_autocast_on_a_cpu_with_native_bf16(tmp_path, monkeypatch):
    """On real copies of /proc/cpuinfo (tests/data/cpuinfo: a Zen 4 machine with avx512_bf16, and
    the same without it), a Sapphire Rapids line with AMX, and `CAREER_CPUINFO`."""
    with_bf16, without = BF16_CPU["CAREER_CPUINFO"], FP32_CPU["CAREER_CPUINFO"]
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_flags(str(sapphire)) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(with_bf16) == ["avx512_bf16"]
    assert cpu_bf16_flags(without) == [] and cpu_bf16_flags(str(tmp_path / "none")) == []
    monkeypatch.setenv("CAREER_CPUINFO", with_bf16)  # what every process of a run reads
    assert cpu_bf16_flags() == ["avx512_bf16"]
    assert TrainConfig().resolve(2, on_gpu=False).precision == "bf16-autocast"
    monkeypatch.setenv("CAREER_CPUINFO", without)
    assert TrainConfig().resolve(2, on_gpu=False).precision == "fp32"
    monkeypatch.delenv("CAREER_CPUINFO")
    config = TrainConfig()
    capable = config.resolve(2, on_gpu=False, cpu_bf16=cpu_bf16_flags(str(sapphire)))
    assert capable.precision == "bf16-autocast"
    assert any(
        "auto -> bf16-autocast (CPU with native bf16: avx512_bf16" in n for n in capable.notes
    )
    plain = config.resolve(2, on_gpu=False, cpu_bf16=[])
    assert plain.precision == "fp32" and any("without native bf16" in n for n in plain.notes)
    assert config.resolve(2, on_gpu=True, cpu_bf16=[]).precision == "bf16"
    # One flag away: an explicit precision is kept.
    assert TrainConfig(precision="fp32").resolve(2, False, ["amx_bf16"]).precision == "fp32"
    # This machine: what a run here resolves to.
    here = config.resolve(2, on_gpu=False).precision
    assert here == ("bf16-autocast" if cpu_bf16_flags() else "fp32")


@needs_kernel
def test_hash_dropout_can_be_turned_off():
    x = torch.randn(10_000)
    try:
        hash_dropout.use(False)
        assert not hash_dropout.applies(x) and "hash_dropout=False" in hash_dropout.kernel_status(
            False
        )
        torch.manual_seed(0)
        off = hash_dropout.dropout(x, 0.5)
        torch.manual_seed(0)
        assert torch.equal(off, F.dropout(x, 0.5))  # torch's own masks, as before
    finally:
        hash_dropout.use(True)
    assert hash_dropout.applies(x)
