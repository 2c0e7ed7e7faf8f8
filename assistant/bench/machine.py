"""The machine record: CPU, SIMD, memory and its bandwidth, OS, versions, power, and others' load.

Peak memory is ``VmHWM`` from /proc on Linux, not ``ru_maxrss``: after fork/vfork+exec Linux
carries the parent's peak into the child's ``ru_maxrss`` (measured: a parent that once held
2 GiB made every child report 2 GiB), so ``ru_maxrss`` is only the fallback elsewhere. The
memory-bandwidth copy runs in its own process (the ``--probe`` worker) for the same reason.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from assistant.bench.config import GIB
from assistant.runtime.hardware import physical_cores


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory: VmHWM on Linux (see the module docstring)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure_bandwidth(n_bytes: int = GIB, reps: int = 5) -> float:
    """Memory bandwidth in bytes/s: the best of ``reps`` numpy copies of ``n_bytes``,
    counting bytes read plus bytes written (STREAM's convention for copy)."""
    import numpy as np

    src = np.ones(n_bytes // 8, dtype=np.float64)  # ones, not empty: every page is touched before timing
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def power_source(root: Path = Path("/sys/class/power_supply"), system: str | None = None) -> str:
    """'battery', 'ac' or 'unknown', from what the OS says (battery runs are throttled)."""
    system = system or platform.system()
    if system == "Darwin":
        try:
            out = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if "Battery Power" in out:
            return "battery"
        return "ac" if "AC Power" in out else "unknown"
    if system != "Linux":
        return "unknown"
    try:
        supplies = list(root.iterdir())
    except OSError:
        return "unknown"

    def read(p: Path, name: str) -> str:
        try:
            return (p / name).read_text().strip()
        except OSError:
            return ""

    batteries = [p for p in supplies if read(p, "type") == "Battery"]
    mains = [p for p in supplies if read(p, "type") in ("Mains", "USB", "USB_C", "USB_PD")]
    if any(read(p, "status") == "Discharging" for p in batteries):
        return "battery"
    if any(read(p, "online") == "1" for p in mains) or batteries:
        return "ac"
    return "unknown"


def simd_flags(system_info: str) -> list[str]:
    """The features llama.cpp reports as on ('AVX2 = 1 | ...') in its system info."""
    flags = []
    for part in system_info.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1" and name.strip():
            flags.append(name.strip())
    return flags


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if platform.system() == "Darwin":
        try:
            return int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5).stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_record(n_bytes: int, reps: int) -> dict:
    """CPU, cores, SIMD flags as llama.cpp sees them, memory, OS, versions, power, bandwidth."""
    from assistant.runtime.llama_lib import extra_buffers_off, system_info
    from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp

    llama_cpp = load_llama_cpp()
    info = system_info(llama_cpp).strip()
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    bandwidth = measure_bandwidth(n_bytes, reps)
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpus_available": affinity,
        "simd": simd_flags(info),
        "llama_system_info": info,
        "weight_buffers": "plain CPU (AMX build: extra buffer types off)"
        if extra_buffers_off(llama_cpp)
        else "llama.cpp default",
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "power": power_source(),
        "versions": {
            "python": platform.python_version(),
            "llama_cpp_python": _version("llama_cpp_python") or getattr(llama_cpp, "__version__", None),
            "numpy": _version("numpy"),
            "local_code_assistant": _version("local-code-assistant"),
        },
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_gib_s": bandwidth / GIB,
        "bandwidth_method": f"best of {reps} numpy copies of {n_bytes / GIB:g} GiB, bytes read + written",
    }


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), else None."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / hz


def _children_cpu_s() -> float:
    try:
        import resource
    except ImportError:
        return 0.0
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_others(run: Callable[[], dict]) -> tuple[dict, float | None]:
    """Run ``run`` (a worker) and return its result and the cores other processes kept busy
    meanwhile: the machine's busy CPU time minus our child's, over the wall time. A shared
    machine disturbs the figures; this says how much, so a run can be judged or repeated."""
    busy0, child0, t0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    result = run()
    busy1, child1, wall = _busy_cpu_s(), _children_cpu_s(), time.perf_counter() - t0
    if busy0 is None or busy1 is None or wall <= 0:
        return result, None
    return result, max(0.0, (busy1 - busy0) - (child1 - child0)) / wall


DISTURBED_CORES = 0.25  # others' average load above which a row is flagged


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
