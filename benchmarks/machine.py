"""The machine the figures were measured on, and its fp32 peak where it is known."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# fp32 multiply-accumulates per cycle per core: FMA units x SIMD lanes. Only CPUs whose
# figure we know (from the vendor's microarchitecture guides) are listed.
_AMD_MACS_PER_CYCLE = {  # cpu family -> 2 FMA pipes x 8 fp32 lanes (256-bit)
    25: 16,  # Zen 3 / Zen 4
    26: 16,  # Zen 5 (256-bit datapath on client parts; conservative for server parts)
}


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                fields.setdefault(key, value)
            elif not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        pass
    return fields


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def peak_gmacs_per_core(cpu: dict[str, str]) -> tuple[float | None, str]:
    """(theoretical fp32 GMAC/s of one core, how it was derived) or (None, why unknown)."""
    flags = set(cpu.get("flags", "").split())
    mhz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    ghz = int(mhz) / 1e6 if mhz else float(cpu.get("cpu MHz", 0) or 0) / 1000
    if cpu.get("vendor_id") == "AuthenticAMD" and {"avx2", "fma"} <= flags:
        family = int(cpu.get("cpu family", 0))
        per_cycle = _AMD_MACS_PER_CYCLE.get(family)
        if per_cycle and ghz:
            source = "cpufreq max" if mhz else "/proc/cpuinfo cpu MHz (a VM reports its nominal clock)"
            return per_cycle * ghz, (f"AMD family {family}: {per_cycle} fp32 MAC/cycle (2x 256-bit FMA) "
                                     f"x {ghz:.2f} GHz ({source})")
    return None, f"unknown for {cpu.get('model name', 'this CPU')} (family {cpu.get('cpu family', '?')})"


def describe() -> dict[str, Any]:
    """What the figures depend on; recorded beside every result."""
    from toolchain.manifest import tool_versions

    cpu = _cpuinfo()
    peak, peak_source = peak_gmacs_per_core(cpu)
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "cpu_model": cpu.get("model name"),
        "cpu_family": cpu.get("cpu family"),
        "cpu_flags_simd": sorted(f for f in cpu.get("flags", "").split()
                                 if f.startswith(("avx", "fma", "sse4", "amx")) or "vnni" in f),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "virtualised": "hypervisor" in cpu.get("flags", "").split(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or "not exposed (VM)",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "peak_fp32_gmacs_per_core": peak,
        "peak_source": peak_source,
        "versions": tool_versions(),
    }


def measured_sgemm_gmacs(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Achieved fp32 GMAC/s of numpy's BLAS matmul (size^3 MACs), best of `repeats`, in a
    subprocess so the BLAS thread count applies: a practical ceiling next to the theory."""
    code = (
        "import json, time, numpy as np\n"
        f"a = np.random.default_rng(0).standard_normal(({size}, {size}), dtype=np.float32)\n"
        "b = a.copy(); a @ b\n"
        "best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) "
        f"for _ in range({repeats}))\n"
        f"print(json.dumps({size}**3 / best / 1e9))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def slug(described: dict[str, Any]) -> str:
    """A file-name-safe machine name: CPU model, core count and SIMD class (hostnames of VMs say
    nothing, and one cloud CPU name covers machines with and without AVX-512 VNNI)."""
    model = re.sub(r"[^a-z0-9]+", "-", (described["cpu_model"] or described["arch"]).lower()).strip("-")
    return f"{model}-{described['cores']}core{simd_class(described)}"


def simd_class(described: dict[str, Any]) -> str:
    flags = set(described.get("cpu_flags_simd") or [])
    if "avx512_vnni" in flags:
        return "-avx512vnni"
    return "-avx512" if "avx512f" in flags else ""
