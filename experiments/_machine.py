"""The machine a benchmark ran on, without JAX (bench_torch.py runs in a
throwaway environment that has only torch and numpy): CPU model, core count
and vector instruction sets, so a figure always names the machine kind it
was measured on."""

from __future__ import annotations

import os
import pathlib
import platform


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (Linux), or None."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


VECTOR_ISA = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
              "amx_tile", "amx_bf16")


def isa_flags() -> list[str]:
    """The vector instruction sets of this CPU among VECTOR_ISA (Linux), so a
    figure always names the machine kind it was measured on."""
    present = set((_cpuinfo("flags") or "").split())
    return [f for f in VECTOR_ISA if f in present]


def machine_label(info: dict) -> str:
    """'<cpu model>, <n> cores, <isa flags>[, <n> x <accelerator>]' for a
    table row or a log line."""
    label = (f"{info['processor']}, {info['cpu_count']} cores, "
             f"{' '.join(info['isa']) or 'ISA unknown'}")
    if info.get("backend", "cpu") != "cpu":
        label += f", {len(info['devices'])} x {info['device_kind']}"
    return label


def cpu_machine() -> dict:
    return {"platform": platform.platform(), "processor": cpu_model(), "isa": isa_flags(),
            "cpu_count": os.cpu_count()}
