"""What one sandboxed run may use (``Limits``), checked when made."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one execution may use; the defaults suit HumanEval-sized programs."""

    timeout_s: float = 10.0  # wall clock, enforced by the caller and by the run's watchdog
    cpu_s: float | None = None  # RLIMIT_CPU; None: the wall clock rounded up, plus 1 s
    memory_mb: int = 1024  # address space (RLIMIT_AS), not resident memory
    file_size_mb: int = 16  # the largest file the program may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # processes + threads of the program at once, itself included (RLIMIT_NPROC)
    output_bytes: int = 64 * 1024  # kept per stream: the first and the last halves
    allow_subprocess: bool = False  # lifts the audit-hook ban on fork/exec/spawn; the rlimit stays

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "open_files", "processes", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, not {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"Limits.cpu_s must be positive or None, not {self.cpu_s!r}")

    @property
    def cpu_limit_s(self) -> int:
        """RLIMIT_CPU's soft limit: whole seconds, at least 1."""
        if self.cpu_s is None:
            return int(-(-self.timeout_s // 1)) + 1
        return max(1, int(-(-self.cpu_s // 1)))
