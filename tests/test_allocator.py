import platform
import resource

import pytest
import torch

from dlrm.allocator import (
    HUGE_PAGE_BYTES,
    MAX_MMAP_THRESHOLD,
    advise_huge_pages,
    huge_page_mode,
    huge_pages_wanted,
    tune_cpu_allocator,
)
from dlrm.models.embeddings import FusedEmbeddingBag

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")


@glibc
def test_tuned_allocator_reuses_freed_blocks_without_page_faults():
    """After tuning, steps that each hold four 4 MiB tensors at once and then free them all
    touch no fresh pages.

    Untuned glibc trims the freed top of the heap once it exceeds its dynamic trim threshold
    (twice the largest block freed so far), so each step faults ~4,000 fresh 4 KiB pages back
    in: measured here, 40-80k faults over these 20 steps in 5 of 6 fresh processes. (One
    block allocated and freed alone is no test: untuned glibc reuses that too, and how many
    steps either needs to settle depends on the heap's layout, so both are warmed first.)
    """
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True  # idempotent

    def step() -> None:
        held = [torch.empty(1 << 20).fill_(1.0) for _ in range(4)]  # 4 x 4 MiB live at once
        del held

    for _ in range(5):  # warm the heap
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 200, f"{faults} page faults in 20 steps reusing 16 MiB of blocks"


def test_bad_settings_are_refused():
    if platform.libc_ver()[0] != "glibc":
        assert tune_cpu_allocator() is False
        return
    with pytest.raises(ValueError, match="mmap_threshold"):
        tune_cpu_allocator(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="keep_bytes"):
        tune_cpu_allocator(keep_bytes=2**31)


# ------------------------------------------------------------------ huge pages for tables
# Over glibc's largest mmap threshold (32 MiB), so every such table is a fresh mapping of its
# own and no advice given to an earlier one can show through.
BIG_TABLES = [400_000, 300_000]  # 700,000 rows x 16 floats = 43 MiB


def mapping_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and ":" not in first:  # a mapping's header: start-end perms ...
                start, end = (int(x, 16) for x in first.split("-"))
                inside = start <= address < end
            elif inside and first == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def kernel_records_huge_page_advice() -> bool:
    """Whether this kernel takes madvise(MADV_HUGEPAGE) and shows it in /proc/self/smaps
    ("hg"), probed on a mapping of the test's own, independent of the code under test (a
    sandboxed kernel may accept the call and record nothing)."""
    import ctypes
    import mmap

    if huge_page_mode() is None or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    probe = mmap.mmap(-1, 4 * HUGE_PAGE_BYTES)
    try:
        probe.madvise(mmap.MADV_HUGEPAGE)
        view = ctypes.c_char.from_buffer(probe)
        address = ctypes.addressof(view)
        del view  # the mapping cannot close while a view of it exists
        return "hg" in mapping_flags(address)
    except (OSError, AssertionError):
        return False
    finally:
        probe.close()


thp = pytest.mark.skipif(not kernel_records_huge_page_advice(),
                         reason="this kernel has no transparent huge pages, or does not "
                                "record the advice in /proc/self/smaps")


def first_huge_page(tensor: torch.Tensor) -> int:
    return (tensor.data_ptr() + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1)


@thp
def test_embedding_tables_ask_for_huge_pages_and_keep_their_values(monkeypatch):
    """A CPU table's memory carries the kernel's huge-page advice ("hg") before its rows are
    drawn; with DLRM_HUGE_PAGES=0 it does not, and the rows are the same either way."""
    monkeypatch.delenv("DLRM_HUGE_PAGES", raising=False)
    advised = FusedEmbeddingBag(BIG_TABLES, 16, seed=3)
    assert "hg" in mapping_flags(first_huge_page(advised.weight))
    monkeypatch.setenv("DLRM_HUGE_PAGES", "0")
    plain = FusedEmbeddingBag(BIG_TABLES, 16, seed=3)
    assert "hg" not in mapping_flags(first_huge_page(plain.weight))
    assert torch.equal(advised.weight, plain.weight)


@thp
def test_deferred_sharded_and_quantized_tables_ask_too(monkeypatch):
    from dlrm.distributed.planner import plan_tables
    from dlrm.distributed.sharding import ShardedEmbeddingBag
    from dlrm.models.embeddings import deferred_tables, materialize_tables
    from dlrm.models.quantized import QuantizedEmbeddingBag

    monkeypatch.delenv("DLRM_HUGE_PAGES", raising=False)
    with deferred_tables():
        deferred = FusedEmbeddingBag(BIG_TABLES, 16, seed=3)
    materialize_tables(deferred)
    assert "hg" in mapping_flags(first_huge_page(deferred.weight))
    plan = plan_tables(BIG_TABLES, 16, world_size=1)
    sharded = ShardedEmbeddingBag(BIG_TABLES, 16, plan, rank=0, seed=3)
    assert "hg" in mapping_flags(first_huge_page(sharded.shards.weight))
    assert torch.equal(sharded.shards.weight, deferred.weight)
    quantized = QuantizedEmbeddingBag([3_000_000], 16, bits=8)  # 46 MiB of codes
    assert "hg" in mapping_flags(first_huge_page(quantized.codes))


def test_huge_page_advice_is_skipped_where_it_cannot_apply(monkeypatch):
    monkeypatch.delenv("DLRM_HUGE_PAGES", raising=False)
    assert advise_huge_pages(torch.empty(1000, 16)) is False  # under min_bytes
    assert advise_huge_pages(torch.empty(1 << 24, device="meta")) is False
    assert advise_huge_pages(torch.empty(4096, 4096).t()[::2]) is False  # not contiguous
    monkeypatch.setenv("DLRM_HUGE_PAGES", "0")
    assert advise_huge_pages(torch.empty(1 << 24)) is False
    assert huge_pages_wanted() is False


def test_a_bad_huge_pages_setting_is_refused_before_the_run_directory_is_made(
        tmp_path, monkeypatch, capsys):
    from dlrm.cli import main

    monkeypatch.setenv("DLRM_HUGE_PAGES", "yes")
    with pytest.raises(ValueError, match="DLRM_HUGE_PAGES='yes'"):
        huge_pages_wanted()
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--max-samples", "2000", "--val-samples", "1000",
                 "--quiet", "--out", str(out)]) == 2
    assert "DLRM_HUGE_PAGES='yes': expected 1" in capsys.readouterr().err
    assert not out.exists()


@thp
def test_rowwise_adagrad_accumulators_ask_too(monkeypatch):
    from dlrm.training.optim import build_optimizer

    monkeypatch.delenv("DLRM_HUGE_PAGES", raising=False)
    tables = FusedEmbeddingBag([12_000_000], 1, seed=0)  # 46 MiB of rows, as many accumulators
    optimizer = build_optimizer(tables, "adagrad", 0.1, sparse_name="rowwise_adagrad")
    (accumulator,) = optimizer.sparse.accumulators
    assert accumulator.shape == (12_000_000,) and not accumulator.any()
    assert "hg" in mapping_flags(first_huge_page(accumulator))


def test_the_pages_tables_get_are_described_for_env_and_bench(monkeypatch):
    import dlrm.allocator as allocator

    monkeypatch.delenv("DLRM_HUGE_PAGES", raising=False)
    for mode, says in ((None, "none on this system (4 KiB pages)"),
                       ("never", "never (the kernel's setting: tables get 4 KiB pages)"),
                       ("madvise", "madvise; tables ask for them"),
                       ("always", "always")):
        monkeypatch.setattr(allocator, "huge_page_mode", lambda mode=mode: mode)
        assert allocator.huge_pages_state() == says
    monkeypatch.setenv("DLRM_HUGE_PAGES", "0")
    monkeypatch.setattr(allocator, "huge_page_mode", lambda: "madvise")
    assert allocator.huge_pages_state() == "madvise; tables do not ask (DLRM_HUGE_PAGES=0)"
