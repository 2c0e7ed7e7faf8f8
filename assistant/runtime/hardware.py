"""Facts about the CPU that decide the default thread count."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def physical_cores() -> int:
    """Physical cores (not SMT threads): decode is memory-bound and SMT siblings only contend."""
    system = platform.system()
    if system == "Linux":
        cores = set()
        for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/core_cpus_list"):
            try:
                cores.add(topo.read_text().strip())
            except OSError:
                continue
        if not cores:
            for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
                try:
                    cores.add(topo.read_text().strip())
                except OSError:
                    continue
        if cores:
            return _limit_to_affinity(len(cores))
    elif system == "Darwin":
        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2)
                if out.returncode == 0 and out.stdout.strip().isdigit():
                    return int(out.stdout.strip())
            except (OSError, subprocess.SubprocessError):
                pass
    return _limit_to_affinity(os.cpu_count() or 1)


def _limit_to_affinity(n: int) -> int:
    """Never more threads than the CPUs this process may run on (containers, taskset)."""
    try:
        return max(1, min(n, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, n)
