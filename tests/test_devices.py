"""Devices and precision: `precision: bf16` only where the CPU computes bfloat16 natively."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import uwav.devices
from uwav.devices import autocast, cpu_has_native_bf16, effective_precision

X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"


@pytest.mark.parametrize(("text", "native"), [(X86_AVX2, False), (X86_BF16, True), (ARM_BF16, True)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, text: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "absent") is False


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uwav.devices, "cpu_has_native_bf16", lambda: False)
    uwav.devices._warn_bf16_fallback.cache_clear()
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="uwav.devices"):
        assert effective_precision(cpu, "bf16") == "fp32"
        with autocast(cpu, "bf16"):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert sum("without native bfloat16" in r.message for r in caplog.records) == 1  # warned once
    assert effective_precision(torch.device("cuda"), "bf16") == "bf16"  # GPUs are not affected
    assert effective_precision(cpu, "fp32") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        effective_precision(cpu, "fp8")


def test_bf16_autocasts_on_a_cpu_with_native_bf16(native_bf16: None) -> None:
    cpu = torch.device("cpu")
    assert effective_precision(cpu, "bf16") == "bf16"
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
