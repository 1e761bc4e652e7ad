"""The native CPU kernels (``dlrm.ops.native``) against float64 references and against the
PyTorch implementations of the operators, and how they are built, cached and refused."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from dlrm.models.interactions import DotInteraction
from dlrm.ops import native
from dlrm.training.optim import SparseSGD

needs_kernels = pytest.mark.skipif(not native.available(),
                                   reason="native kernels unavailable (no C++ compiler)")


def gram_pairs64(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool
                 ) -> torch.Tensor:
    """[x, lower-triangle dots] in float64 by the definition (pairs row by row)."""
    vectors = torch.cat([dense[:, None], pooled], dim=1).double()
    gram = vectors @ vectors.transpose(1, 2)
    n = vectors.shape[1]
    rows, cols = torch.tril_indices(n, n, offset=0 if self_interaction else -1)
    return torch.cat([dense.double(), gram[:, rows, cols]], dim=1)


# (F, D): 26 x 16 is the kaggle shape; 40 features span three 16-wide blocks of Gram columns;
# D=12 takes the kernel's path for dimensions that are not a multiple of 16; D=64 four blocks.
SHAPES = [(26, 16), (40, 16), (5, 12), (3, 64), (0, 16)]


@needs_kernels
@pytest.mark.parametrize("features,dim", SHAPES)
@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("layout", ["sample_major", "feature_major"])
def test_dot_kernel_float32_matches_float64_definition(features, dim, self_interaction, layout):
    torch.manual_seed(features * 100 + dim)
    batch = 70  # not a multiple of any chunking
    dense = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    if layout == "sample_major":
        pooled = torch.randn(batch, features, dim, dtype=torch.float64, requires_grad=True)
        view = pooled
    else:  # the multi-hot lookup's (F, B, D) storage seen as (B, F, D)
        pooled = torch.randn(features, batch, dim, dtype=torch.float64, requires_grad=True)
        view = pooled.transpose(0, 1)
    want = gram_pairs64(dense, view, self_interaction)
    upstream = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * upstream).sum(), (dense, pooled))

    dense32 = dense.detach().float().requires_grad_()
    pooled32 = pooled.detach().float().requires_grad_()
    view32 = pooled32 if layout == "sample_major" else pooled32.transpose(0, 1)
    with native.use_native(True):
        got = DotInteraction(features, self_interaction)(dense32, view32)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * dim)
    got_grads = torch.autograd.grad((got * upstream.float()).sum(), (dense32, pooled32))
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * dim * (features + 1))


@needs_kernels
@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_kernel_bfloat16_matches_the_pytorch_path(self_interaction):
    """Under autocast the interaction computes in bf16: both paths round the vectors to bf16;
    the kernel sums in float32, the bmm path too, so they agree to a bf16 rounding step."""
    torch.manual_seed(3)
    batch, features, dim = 96, 26, 16
    dense = torch.randn(batch, dim).bfloat16()
    pooled = torch.randn(batch, features, dim)
    module = DotInteraction(features, self_interaction)
    outs, grads = [], []
    for on in (True, False):
        d, p = dense.clone().requires_grad_(), pooled.clone().requires_grad_()
        with native.use_native(on):
            out = module(d, p)
            upstream = torch.linspace(-1, 1, out.numel()).view_as(out).bfloat16()
            out.backward(upstream)
        assert out.dtype == torch.bfloat16
        assert d.grad.dtype == torch.bfloat16 and p.grad.dtype == torch.float32
        outs.append(out.float())
        grads.append((d.grad.float(), p.grad))
    # One bf16 ulp of the largest values (~|x|^2 * D ~ 50 here) is 0.25.
    torch.testing.assert_close(outs[0], outs[1], rtol=1 / 128, atol=0.05)
    for g_native, g_torch in zip(*grads):
        torch.testing.assert_close(g_native, g_torch, rtol=1 / 64, atol=0.1)
    # And both are close to float64 truth on the bf16-rounded inputs.
    want = gram_pairs64(dense.double(), pooled.bfloat16().double(), self_interaction)
    torch.testing.assert_close(outs[0].double(), want, rtol=1 / 128, atol=0.05)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sgd_kernel_equals_scatter_add_bit_for_bit_with_duplicates(threads):
    torch.manual_seed(4)
    weight = torch.randn(5000, 16)
    ids = torch.randint(0, 5000, (20000,))  # many duplicates, more than one thread's share
    ids[:50] = 7  # one hot row updated 50+ times
    ids[-50:] = 7  # ... also from the last thread's slice: order across slices matters
    rows = torch.randn(20000, 16)
    grads = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for on in (True, False):
            param = torch.nn.Parameter(weight.clone())
            param.sparse_rows = True
            param.grad = torch.sparse_coo_tensor(ids[None], rows, param.shape,
                                                 check_invariants=False)
            with native.use_native(on):
                SparseSGD([param], lr=0.05).step()
            grads.append(param.detach())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0], grads[1])
    # ... and both equal the float64 sum of the duplicates to float32 rounding.
    want = weight.double().index_add(0, ids, rows.double(), alpha=-0.05)
    torch.testing.assert_close(grads[0].double(), want, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_one_hot_lookup_equals_offsets_plus_index_select_and_names_a_bad_feature():
    torch.manual_seed(5)
    sizes = [300, 7, 1, 50]
    table_offsets = torch.tensor([0, 300, 307, 308, 358])
    weight = torch.randn(358, 16)
    batch = 1000  # several threads' chunks
    values = torch.cat([torch.randint(0, n, (batch,)) for n in sizes])  # feature-major
    rows, ids = native.lookup_one_hot(weight, values, table_offsets)
    want_ids = (values.view(4, batch) + table_offsets[:-1, None]).t().reshape(-1)
    assert torch.equal(ids, want_ids)  # sample-major: b*F + f
    assert torch.equal(rows, weight.index_select(0, want_ids))
    values[2 * batch + 17] = 1  # feature 2 has a single row: id 1 is outside it
    with pytest.raises(native.KernelError, match="feature 2 has an id outside its table of 1"):
        native.lookup_one_hot(weight, values, table_offsets)
    values[2 * batch + 17] = 0
    values[5] = -1
    with pytest.raises(native.KernelError, match="feature 0"):
        native.lookup_one_hot(weight, values, table_offsets)
    before = weight.clone()
    with pytest.raises(native.KernelError, match="row id -1 is out of range for a weight of "
                                                  "358 rows"):
        native.sgd_rows_(weight, torch.tensor([1, -1]), torch.ones(2, 16), 0.1)
    assert torch.equal(weight, before)  # nothing written on refusal


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
def test_bias_act_kernel_matches_torch(dtype, relu):
    torch.manual_seed(6)
    out = torch.randn(301, 70).to(dtype)
    out[3, 4] = float("nan")  # relu keeps NaN, as torch.relu does
    bias = torch.randn(70)
    want = out.float() + bias
    want = (want.relu() if relu else want).to(dtype)
    got = native.bias_act_(out.clone(), bias, relu)
    assert torch.equal(got.isnan(), want.isnan()) and got[3, 4].isnan()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())  # float32 math, one rounding


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
def test_act_bias_backward_kernel_matches_threshold_backward_and_a_float64_sum(dtype, relu):
    torch.manual_seed(7)
    grad = torch.randn(1000, 70).to(dtype)  # 1000 rows: 16 partial sums of 63 rows
    act_out = torch.randn(1000, 70).relu_().to(dtype)
    act_out[5, 6] = float("nan")  # threshold_backward lets the gradient through NaN
    want = torch.ops.aten.threshold_backward(grad, act_out, 0) if relu else grad
    masked, bias_grad = native.act_bias_backward(grad, act_out, relu, in_place=False)
    assert torch.equal(masked, want)
    assert masked.data_ptr() != grad.data_ptr() or not relu  # the caller's buffer is untouched
    assert bias_grad.dtype == dtype  # summed in float32, rounded once at the end
    rtol = 1e-5 if dtype == torch.float32 else 1 / 256
    torch.testing.assert_close(bias_grad.double(), want.double().sum(0), rtol=rtol, atol=1e-4)
    # In place over a buffer we own: same values, and the same sums for any thread count.
    before = torch.get_num_threads()
    sums = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            own = grad.clone()
            masked_in_place, sums_t = native.act_bias_backward(own, act_out, relu, in_place=True)
            assert masked_in_place.data_ptr() == own.data_ptr() and torch.equal(own, want)
            sums.append(sums_t)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(s, bias_grad) for s in sums)


def test_without_a_compiler_everything_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_load_failed", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger="dlrm.ops.native"):
        assert native.available() is False
        assert native.available() is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "no C++ compiler" in messages[0]  # said once, not per call
    dense, pooled = torch.randn(4, 8), torch.randn(4, 3, 8)
    out = DotInteraction(3)(dense, pooled)
    torch.testing.assert_close(out.double(), gram_pairs64(dense, pooled, False),
                               rtol=1e-5, atol=1e-5)


def test_active_on_says_cpu_runs_use_them_and_cuda_runs_do_not():
    assert native.active_on("cpu") is native.available()
    assert native.active_on(torch.device("cuda", 0)) is False
    with native.use_native(False):
        assert native.active_on("cpu") is False


def test_environment_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("DLRM_NATIVE_KERNELS", "0")
    assert native.available() is False
    with native.use_native(True):  # the explicit switch wins over the environment
        assert native.available() is (native.library() is not None)


@needs_kernels
def test_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRM_CACHE_DIR", str(tmp_path))
    compiler = native._compiler()
    first = native.build(compiler)
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native.build(compiler) == first and first.stat().st_mtime_ns == stamp
    # No temp files left: the library and the lock file that serialises builds.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build.lock", first.name]


@needs_kernels
def test_a_build_without_openmp_gives_the_same_results(tmp_path, monkeypatch):
    """Compilers without OpenMP (Apple clang) build a single-threaded library, in which
    parallel_for hands each kernel its whole range at once: every kernel must cover it."""
    import ctypes

    monkeypatch.setenv("DLRM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "OPENMP", [])
    lib = ctypes.CDLL(str(native.build(native._compiler())))
    native._declare(lib)
    torch.manual_seed(8)
    weight = torch.randn(5000, 16)
    ids = torch.randint(0, 5000, (20000,))
    rows = torch.randn(20000, 16)
    values = torch.randint(0, 100, (3 * 700,))
    table_offsets = torch.tensor([0, 100, 200, 5000])
    grad, act_out = torch.randn(700, 70), torch.randn(700, 70).relu_()
    dense, pooled = torch.randn(700, 16), torch.randn(700, 26, 16)
    results = []
    for library in (native.library(), lib):
        monkeypatch.setattr(native, "_library", library)
        updated = weight.clone()
        native.sgd_rows_(updated, ids, rows, 0.05)  # 2 threads' lists, applied by one
        results.append([updated, *native.lookup_one_hot(weight, values, table_offsets),
                        *native.act_bias_backward(grad, act_out, True, in_place=False),
                        native.bias_act_(grad.clone(), act_out[0], True),
                        native.dot_forward(dense, pooled, False)])
    for threaded, single in zip(*results, strict=True):
        assert torch.equal(threaded, single)


@needs_kernels
def test_an_unwritable_cache_folder_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DLRM_CACHE_DIR", str(blocker / "dlrm"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    built = native.build(native._compiler())
    assert built.parent.parent == tmp_path and built.exists()


def test_any_build_failure_means_the_fallback_not_a_crash(monkeypatch, caplog):
    def broken_build(compiler):
        raise RuntimeError("could not determine home directory")
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_load_failed", None)
    monkeypatch.setattr(native, "build", broken_build)
    with caplog.at_level(logging.WARNING, logger="dlrm.ops.native"):
        assert native.available() is False
    assert "RuntimeError: could not determine home directory" in caplog.records[0].getMessage()


@needs_kernels
def test_concurrent_processes_build_once_under_the_lock(tmp_path):
    """torchrun ranks start together: three processes with an empty cache folder build the
    library once (the others wait on the lock and load that build)."""
    code = ("import time, sys; from dlrm.ops import native; t = time.time(); "
            "path = native.build(native._compiler()); print(path, path.stat().st_mtime_ns)")
    env = {"DLRM_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({tuple(o) for o in outputs}) == 1  # one path, one build (same mtime)
    built = [p.name for p in tmp_path.iterdir() if p.suffix == ".so"]
    assert len(built) == 1


def test_a_failed_native_call_names_the_problem_without_asserts():
    """Error codes become messages; nothing relies on `assert` (gone under python -O)."""
    with pytest.raises(native.KernelError, match="a tensor has a dtype the kernel does not take"):
        native._check(-2, "dot interaction forward", "B=1")
    with pytest.raises(native.KernelError, match="a size is negative or zero \\(B=0\\)"):
        native._check(-1, "dot interaction forward", "B=0")
    source = (native.SOURCE.parent / "native.py").read_text()
    assert "assert " not in source
