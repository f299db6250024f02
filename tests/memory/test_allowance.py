"""The CUDA allowance: device bytes no trace sees (context, workspaces, fragmentation), kept out of a CUDA budget.

Planning runs on ``meta``, so a ``"cuda"`` budget plans here without a GPU.
"""

from __future__ import annotations

import pytest

from framepack_history.cli.main import main
from framepack_history.config.presets import load_preset
from framepack_history.memory.budget import CUDA_ALLOWANCE, RESERVE_FRACTION, Budget, GiB, MiB
from framepack_history.memory.planner import format_table, plan
from tests.conftest import TINY_HUNYUAN

SECONDS = 1.3  # three sections of the tiny model
HOST = 64 * GiB  # a CUDA plan's host peak counts the CUDA libraries' 2 GiB


@pytest.fixture(scope="module")
def deeper():
    """The tiny HunyuanVideo-FramePack preset with five DiT blocks, so some can stay and some stream."""
    preset = load_preset(TINY_HUNYUAN)
    preset.model.config.update({"num_layers": 2, "num_single_layers": 3})
    return preset


@pytest.fixture(scope="module")
def roomy(deeper):
    """Its plan with everything resident: the device peak every tighter budget is measured against."""
    p = plan(deeper, SECONDS, budget=Budget(GiB, GiB, "cpu", "test"))
    assert not p.strategy.streamed
    return p


def test_the_allowance_is_named_with_its_terms():
    a = CUDA_ALLOWANCE
    assert a.total == a.context + a.workspaces + a.fragmentation
    # the context alone measured 287-426 MiB with lazy loading; the whole allowance stays about a GiB
    assert 256 * MiB <= a.context <= a.total <= 2 * GiB and a.workspaces > 0 and a.fragmentation > 0
    line = Budget(int(11.5 * GiB), 32 * GiB, "cuda", "preset").describe_allowance()
    assert line.startswith(f"CUDA allowance {a.total / GiB:.2f} GiB")
    for term in (f"context {a.context // MiB} MiB", f"workspaces {a.workspaces // MiB} MiB",
                 f"fragmentation {a.fragmentation // MiB} MiB", "11.50 GiB budget"):
        assert term in line


def test_a_cuda_budget_is_the_budget_less_the_allowance_and_measured_free_memory_less_no_context():
    b = Budget(int(11.5 * GiB), 32 * GiB, "cuda", "preset")
    assert b.allowance == CUDA_ALLOWANCE.total and b.usable == int(11.5 * GiB) - CUDA_ALLOWANCE.total
    # free memory measured with mem_get_info is measured after the context was made: it is not kept back twice
    m = Budget(int(11.5 * GiB), 32 * GiB, "cuda", "measured")
    assert m.allowance == CUDA_ALLOWANCE.total - CUDA_ALLOWANCE.context
    line = m.describe_allowance()
    assert f"context {CUDA_ALLOWANCE.context // MiB} MiB" not in line and "measured after the context" in line
    assert Budget(CUDA_ALLOWANCE.total // 2, GiB, "cuda", "test").usable == 0  # never negative


def test_cpu_budgets_add_no_cuda_allowance(deeper, roomy):
    b = Budget(GiB, GiB, "cpu", "test")
    assert b.allowance == 0 and b.usable == int(GiB * (1 - RESERVE_FRACTION))
    assert "no CUDA allowance" in b.describe_allowance()
    assert "CUDA allowance" not in roomy.summary()
    assert format_table(roomy).splitlines()[-1] == "assumes: 4% of the cpu budget kept back (no CUDA allowance)"


def test_a_budget_that_fit_by_less_than_the_allowance_now_streams(deeper, roomy):
    peak = roomy.device_peak
    # fits everything beside the old 4 % reserve, with far less than the allowance to spare
    tight = int(peak / (1 - RESERVE_FRACTION)) + 4 * MiB
    on_cpu = plan(deeper, SECONDS, budget=Budget(tight, GiB, "cpu", "test"))
    on_cuda = plan(deeper, SECONDS, budget=Budget(tight, HOST, "cuda", "test"))
    assert not on_cpu.strategy.streamed and on_cpu.fits
    assert len(on_cuda.strategy.streamed) > len(on_cpu.strategy.streamed)
    # the same peak plus exactly the allowance keeps every block resident again: nothing else was added
    exact = plan(deeper, SECONDS, budget=Budget(peak + CUDA_ALLOWANCE.total, HOST, "cuda", "test"))
    assert not exact.strategy.streamed and exact.fits and exact.device_peak == peak
    short = plan(deeper, SECONDS, budget=Budget(peak + CUDA_ALLOWANCE.total - 1, HOST, "cuda", "test"))
    assert short.strategy.streamed
    # the page's line and the CLI's table say what the plan assumes
    assert f"less the {CUDA_ALLOWANCE.total / GiB:.2f} GiB CUDA allowance" in exact.summary()
    assert format_table(exact).splitlines()[-1].startswith(f"assumes: CUDA allowance {CUDA_ALLOWANCE.total / GiB:.2f} GiB")


def test_the_plan_command_names_the_allowance(tmp_path, capsys):
    cuda = tmp_path / "tiny-cuda.toml"
    cuda.write_text(TINY_HUNYUAN.read_text() + '\n[hardware]\ndevice = "cuda"\ndevice_budget_gib = 2\nhost_budget_gib = 4\n')
    assert main(["plan", "--preset", str(cuda), "--seconds", str(SECONDS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{(2 * GiB - CUDA_ALLOWANCE.total) / GiB:.2f} GiB usable (2.00 GiB less the" in out[0]
    assert out[-1] == f"assumes: {CUDA_ALLOWANCE.describe()} kept back from the 2.00 GiB budget"
    assert main(["plan", "--preset", str(TINY_HUNYUAN), "--seconds", str(SECONDS)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(no CUDA allowance)")
