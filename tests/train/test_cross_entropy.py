import pytest
import torch

from trimodal.train import cross_entropy as xe
from trimodal.train.cross_entropy import (
    ChunkedLinearCrossEntropy,
    linear_cross_entropy,
    reference_linear_cross_entropy,
    resolve_impl,
    spans,
)


def problem(n: int, d: int, v: int, dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    """hidden [n, d], weight [v, d] (leaf tensors, requiring grad) and targets [n]; logits of
    order ``scale`` so the softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) * (scale / d**0.5)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(), targets


def upstream(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random upstream gradients for ce and lse (both used, as in the loss)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g), torch.randn(n, generator=g)


def run(impl: str, hidden, weight, targets, g_ce, g_lse, **kw):
    """(ce, lse, grad_hidden, grad_weight) of one forward + backward of Σ g_ce·ce + g_lse·lse."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ce, lse = linear_cross_entropy(h, w, targets, impl=impl, **kw)
    ((ce * g_ce.to(ce.dtype)).sum() + (lse * g_lse.to(lse.dtype)).sum()).backward()
    return ce.detach(), lse.detach(), h.grad, w.grad


def test_spans_cover_the_range():
    assert spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert spans(8, 8) == [(0, 8)]
    assert spans(0, 3) == []


def test_reference_is_todays_math():
    hidden, weight, targets = problem(7, 5, 11)
    logits = (hidden @ weight.t()).float()
    lse = torch.logsumexp(logits, -1)
    ce, lse_ref = reference_linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(lse_ref, lse, rtol=0, atol=0)
    torch.testing.assert_close(ce, lse - logits[torch.arange(7), targets], rtol=0, atol=0)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))


@pytest.mark.parametrize(
    "n,v,chunk,row_chunk",
    [
        (37, 53, 8, 16384),  # vocab chunks that do not divide V
        (37, 53, 53, 16384),  # one chunk
        (37, 53, 1000, 16384),  # chunk larger than V
        (37, 53, 1, 16384),  # one column at a time
        (37, 53, 7, 10),  # row tiles that do not divide N (weight-gradient accumulator path)
        (37, 53, 16, 1),  # one row at a time
        (5, 211, 64, 2),
    ],
)
def test_chunked_matches_reference_fp32(n, v, chunk, row_chunk):
    hidden, weight, targets = problem(n, 24, v, scale=3.0)
    g_ce, g_lse = upstream(n)
    ref = run("reference", hidden, weight, targets, g_ce, g_lse)
    got = run("chunked", hidden, weight, targets, g_ce, g_lse, chunk_size=chunk, row_chunk_size=row_chunk)
    for name, a, b in zip(("ce", "lse", "grad_hidden", "grad_weight"), got, ref):
        assert a.dtype == b.dtype == torch.float32, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_targets_at_chunk_edges():
    """First and last column of every chunk, and the last column of V."""
    v, chunk = 50, 8
    targets = torch.tensor([0, 7, 8, 15, 16, 47, 48, 49])
    hidden, weight, _ = problem(len(targets), 16, v, scale=3.0)
    g_ce, g_lse = upstream(len(targets))
    ref = run("reference", hidden, weight, targets, g_ce, g_lse)
    got = run("chunked", hidden, weight, targets, g_ce, g_lse, chunk_size=chunk)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "reference", "auto"])
def test_zero_rows(impl):
    """Ranks with no masked rows still call the head: empty outputs, zero (not None) grads."""
    hidden = torch.zeros(0, 12, requires_grad=True)
    weight = torch.randn(30, 12, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long)
    ce, lse = linear_cross_entropy(hidden, weight, targets, impl=impl, chunk_size=7)
    assert ce.shape == lse.shape == (0,) and ce.dtype == lse.dtype == torch.float32
    (ce.sum() + 1e-5 * (lse * lse).sum()).backward()
    assert hidden.grad is not None and hidden.grad.shape == (0, 12)
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))


def test_bf16_chunked_within_bf16_tolerance_of_fp32_reference():
    """bf16 tiles, fp32 reductions: close to the fp32 reference (relative ~1e-2)."""
    hidden, weight, targets = problem(64, 32, 300, dtype=torch.float32, scale=3.0)
    g_ce, g_lse = upstream(64)
    ref = run("reference", hidden, weight, targets, g_ce, g_lse)
    got = run("chunked", hidden.to(torch.bfloat16), weight.to(torch.bfloat16), targets, g_ce, g_lse, chunk_size=64)
    ce, lse, gh, gw = got
    assert ce.dtype == lse.dtype == torch.float32  # fp32 outputs from bf16 inputs
    assert gh.dtype == gw.dtype == torch.bfloat16  # gradients in the inputs' dtype
    torch.testing.assert_close(ce, ref[0], rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(lse, ref[1], rtol=1e-2, atol=2e-2)
    for a, b in zip((gh, gw), ref[2:]):
        err = (a.float() - b).norm() / b.norm()
        assert err < 1e-2, float(err)


def test_bf16_chunked_matches_bf16_reference():
    """Same bf16 logits as today's bf16 head (F.linear in bf16, then fp32): close agreement."""
    hidden, weight, targets = problem(40, 32, 100, dtype=torch.bfloat16, scale=3.0)
    g_ce, g_lse = upstream(40)
    ref = run("reference", hidden, weight, targets, g_ce, g_lse)
    got = run("chunked", hidden, weight, targets, g_ce, g_lse, chunk_size=32)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-4)
    for a, b in zip(got[2:], ref[2:]):
        err = (a.float() - b.float()).norm() / b.float().norm()
        assert err < 1e-2, float(err)


def test_gradcheck_float64():
    hidden, weight, targets = problem(6, 4, 13, dtype=torch.float64, scale=2.0)
    g_ce, g_lse = upstream(6)
    g_ce, g_lse = g_ce.double(), g_lse.double()

    def f(h, w):
        ce, lse = ChunkedLinearCrossEntropy.apply(h, w, targets, 5, 4)
        return ce, lse

    assert torch.autograd.gradcheck(f, (hidden, weight), eps=1e-6, atol=1e-7)


def test_gradcheck_through_public_api_float64():
    hidden, weight, targets = problem(5, 3, 9, dtype=torch.float64, scale=2.0)
    f = lambda h, w: linear_cross_entropy(h, w, targets, impl="chunked", chunk_size=4, row_chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (hidden, weight), eps=1e-6, atol=1e-7)


def test_combined_loss_gradient_matches_reference_autograd():
    """Σ w·ce / n + λ·mean lse² (the objective's form) through chunked == autograd of reference."""
    n, lam = 45, 1e-2  # a large λ so the z-loss gradient is visible at the tolerance
    hidden, weight, targets = problem(n, 20, 77, scale=3.0)
    w_row = torch.rand(n, generator=torch.Generator().manual_seed(5)) * 4

    def loss_grads(impl):
        h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        ce, lse = linear_cross_entropy(h, w, targets, impl=impl, chunk_size=16, row_chunk_size=20)
        loss = (w_row * ce).sum() / n + lam * (lse * lse).sum() / n
        loss.backward()
        return loss.detach(), h.grad, w.grad

    for a, b in zip(loss_grads("chunked"), loss_grads("reference")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # and the z-loss term alone (ce unused: its upstream gradient is zero)
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    _, lse = linear_cross_entropy(h, w, targets, impl="chunked", chunk_size=16)
    (lse * lse).sum().backward()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    _, lse2 = reference_linear_cross_entropy(h2, w2, targets)
    (lse2 * lse2).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-5)


def test_only_one_input_requires_grad():
    hidden, weight, targets = problem(9, 8, 20)
    h = hidden.detach().requires_grad_()
    ce, lse = linear_cross_entropy(h, weight.detach(), targets, impl="chunked", chunk_size=6)
    (ce.sum() + lse.sum()).backward()
    ref_h = hidden.detach().requires_grad_()
    ce2, lse2 = reference_linear_cross_entropy(ref_h, weight.detach(), targets)
    (ce2.sum() + lse2.sum()).backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-6)


def test_large_logits_are_stable():
    """Logits of ±1e3 (overflow in a naive exp): chunked logaddexp stays finite and exact."""
    hidden, weight, targets = problem(10, 8, 40, scale=1.0)
    weight = (weight.detach() * 2000).requires_grad_()
    g_ce, g_lse = upstream(10)
    ref = run("reference", hidden, weight, targets, g_ce, g_lse)
    got = run("chunked", hidden, weight, targets, g_ce, g_lse, chunk_size=9)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


def test_autocast_uses_autocast_dtype():
    """Under CPU autocast (bf16) the tiles are bf16, as nn.Linear's would be; fp32 leaves get
    fp32 gradients through the cast."""
    hidden, weight, targets = problem(16, 16, 50, scale=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce, lse = linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=16)
        ce_ref, lse_ref = linear_cross_entropy(hidden, weight, targets, impl="reference")
    assert ce.dtype == torch.float32
    torch.testing.assert_close(ce, ce_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-4)
    ce.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32


def test_input_validation():
    hidden, weight, targets = problem(4, 8, 10)
    with pytest.raises(ValueError, match="impl"):
        linear_cross_entropy(hidden, weight, targets, impl="fast")
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets.int())
    with pytest.raises(ValueError, match="chunk"):
        linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=0)
    with pytest.raises(IndexError, match="targets"):
        linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 10]), impl="chunked")


def test_out_of_range_target_is_nan_in_the_kernel():
    """Without the (CPU-only) range check, a target outside [0, V) gives NaN, not a silent lse."""
    hidden, weight, _ = problem(3, 4, 6)
    ce, lse = xe.chunked_forward(hidden.detach(), weight.detach(), torch.tensor([0, 6, -1]), 4, 2)
    assert torch.isfinite(ce[0]) and torch.isnan(ce[1:]).all() and torch.isfinite(lse).all()


def test_auto_policy():
    assert resolve_impl("auto", "cpu", cce_importable=True) == "reference"
    assert resolve_impl("auto", "cpu", cce_importable=False) == "reference"
    assert resolve_impl("auto", "cuda", cce_importable=True) == "cce"
    assert resolve_impl("auto", "cuda", cce_importable=False) == "chunked"
    assert resolve_impl("chunked", "cpu") == "chunked"
    assert resolve_impl("reference", "cuda", cce_importable=True) == "reference"


def test_cce_where_it_cannot_run_raises():
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_impl("cce", "cpu", cce_importable=True)
    with pytest.raises(RuntimeError, match="cut-cross-entropy"):
        resolve_impl("cce", "cuda", cce_importable=False)
    hidden, weight, targets = problem(4, 8, 10)
    with pytest.raises(RuntimeError, match="cut-cross-entropy|CUDA"):
        linear_cross_entropy(hidden, weight, targets, impl="cce")


def test_cce_not_installed_here_is_guarded():
    """The import is guarded: the module loads and reports cce unavailable (not installed in
    this environment; skip if someone installs it)."""
    if xe.cce_available():
        pytest.skip("cut-cross-entropy is installed")
    assert xe._cce_module() is None
