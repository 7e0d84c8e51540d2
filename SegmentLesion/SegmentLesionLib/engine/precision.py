"""The network's working precision: what the hardware runs natively, what the user asks, what the model allows.

- CUDA: float16 autocast (``auto``), as before; bfloat16 when asked and the GPU has it; float32 when asked.
- CPU: bfloat16 autocast where the CPU computes bf16 natively (AMX-BF16 or AVX-512 BF16, which oneDNN uses for
  convolutions), float32 elsewhere. The capability comes from torch's own CPU query (``torch.cpu.get_capabilities``,
  torch >= 2.6; ``torch.cpu._is_avx512_bf16_supported`` before) and, on Linux, the kernel's ``/proc/cpuinfo`` flags.
- A model whose metadata says ``"allow_reduced_precision": false`` always runs in float32.

Only the network runs in reduced precision: MONAI's sliding window blends in float32 (its buffers take the float32
input's type and each window's output is cast back to float32 before blending), and the softmax runs in float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import torch

from ..errors import InputError

logger = logging.getLogger("SegmentLesion")

REQUESTS = ("auto", "fp32", "bf16")  # what ``--precision`` accepts
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU computes bfloat16 natively, with which instructions, and who said so."""

    native: bool
    instructions: str  # "AMX-BF16", "AVX-512 BF16", or "" when neither
    source: str  # "torch" (torch's CPU query), "/proc/cpuinfo", or "unknown"


@dataclass(frozen=True)
class Precision:
    """The working precision of one run: ``fp32``, ``bf16`` or ``fp16`` (CUDA), and why it was chosen."""

    name: str
    reason: str
    note: str | None = None  # one line for the user when the choice is not what was asked for

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (float32: no autocast)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self, device_type: str) -> ContextManager[object]:
        """The context the network runs under: autocast to ``dtype``, or nothing for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)


def cpuinfo_flags(path: Path = CPUINFO) -> set[str] | None:
    """The CPU flags the Linux kernel reports (first processor), or None where there is no ``/proc/cpuinfo``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return set(value.split())
    return set()


def _torch_capabilities() -> dict[str, object] | None:
    """torch's own CPU capability query (cpuinfo library), or None where this torch has none."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is not None:
        return dict(query())
    legacy = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if legacy is None:
        return None
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return {"avx512_bf16": bool(legacy()), "amx_bf16": bool(amx())}


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> CpuBf16:
    """Detect native bfloat16 on this CPU (cached: it does not change while the process runs).

    torch's query is preferred (it also sees what the OS enabled, e.g. AMX tiles); ``/proc/cpuinfo`` answers where
    this torch has no query. oneDNN must also have a bf16 path (``torch.ops.mkldnn._is_mkldnn_bf16_supported``).
    """
    capabilities = _torch_capabilities()
    if capabilities is not None:
        source, amx, avx512 = "torch", bool(capabilities.get("amx_bf16")), bool(capabilities.get("avx512_bf16"))
    else:
        flags = cpuinfo_flags() if sys.platform.startswith("linux") else None
        if flags is None:
            return CpuBf16(False, "", "unknown")
        source, amx, avx512 = str(CPUINFO), "amx_bf16" in flags, "avx512_bf16" in flags
    onednn = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if onednn is not None and not onednn():
        return CpuBf16(False, "", source)
    instructions = "AMX-BF16" if amx else "AVX-512 BF16" if avx512 else ""
    return CpuBf16(bool(instructions), instructions, source)


def choose_precision(
    requested: str, device_type: str, allow_reduced: bool = True, cpu: CpuBf16 | None = None, cuda_bf16: bool | None = None
) -> Precision:
    """The precision to run with.

    Args:
        requested: ``auto``, ``fp32`` or ``bf16``.
        device_type: ``cpu`` or ``cuda``.
        allow_reduced: the model's ``allow_reduced_precision`` (False: always fp32).
        cpu: this CPU's bf16 capability (default: detected).
        cuda_bf16: whether the GPU has bfloat16 (default: asked from torch).

    Raises:
        InputError: an unknown request, or bf16 asked on a GPU without it.
    """
    if requested not in REQUESTS:
        raise InputError(f"unknown precision {requested!r} ({', '.join(REQUESTS)})")
    if requested == "fp32":
        return Precision("fp32", "asked for")
    if not allow_reduced:
        reason = "the model's metadata forbids reduced precision (allow_reduced_precision: false)"
        note = f"--precision bf16 ignored: {reason}; running in fp32" if requested == "bf16" else None
        return Precision("fp32", reason, note)
    if device_type == "cuda":
        if requested == "auto":
            return Precision("fp16", "CUDA: float16 autocast")
        if not (torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16):
            raise InputError("--precision bf16: this GPU has no bfloat16 support (use auto for float16, or fp32)")
        return Precision("bf16", "asked for (CUDA bfloat16 autocast)")
    cpu = cpu or cpu_bf16()
    if cpu.native:
        return Precision("bf16", f"this CPU has {cpu.instructions}" if requested == "auto" else "asked for")
    if requested == "auto":
        return Precision("fp32", "this CPU has no native bf16 (AMX-BF16 or AVX-512 BF16)")
    note = "--precision bf16: this CPU has no native bf16 (AMX-BF16 or AVX-512 BF16): it is emulated, likely slower than fp32"
    return Precision("bf16", "asked for (emulated)", note)
