"""A small seccomp filter for the program process: no UNIX sockets, no kernel side doors.

A network namespace does not isolate path-named UNIX sockets (a database socket, a session bus,
the Docker socket), and classic BPF cannot read the address that ``connect()`` points to, so the
filter refuses to create them: ``socket(AF_UNIX, ...)`` fails with EACCES, and ``socketpair``
only makes connected stream pairs (what ``multiprocessing`` and ``asyncio`` use), which cannot be
re-aimed. Without a network namespace every ``socket()`` is refused. io_uring (which makes
sockets without the syscall), ptrace, cross-process memory access, pidfd_getfd, bpf,
perf_event_open, userfaultfd, the key ring and open_by_handle_at fail with EPERM. Installed with
``prctl`` through ctypes after ``no_new_privs``; stdlib only, imported by ``child.py``.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import socket
import struct
from typing import Any

PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 21, 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _AND, _RET = 0x20, 0x15, 0x35, 0x54, 0x06
_X32_BIT = 0x40000000

# (audit arch, syscall numbers): socket, socketpair, then the ones refused outright.
_ARCHES = {
    "x86_64": (
        0xC000003E,
        41,
        53,
        {
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "pidfd_getfd": 438,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "open_by_handle_at": 304,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
        },
    ),
    "aarch64": (
        0xC00000B7,
        198,
        199,
        {
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "pidfd_getfd": 438,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "open_by_handle_at": 265,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
        },
    ),
}


def available(libc: Any) -> tuple[bool, str]:
    """Whether this machine can take the filter, and if not, why."""
    machine = platform.machine()
    if machine not in _ARCHES:
        return False, f"no syscall table for {machine}"
    if libc.lib.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return False, "the kernel has no seccomp"
    return True, ""


def program(allow_inet: bool, machine: str | None = None) -> bytes:
    """The filter as packed ``struct sock_filter`` instructions."""
    arch, sys_socket, sys_socketpair, refused = _ARCHES[machine or platform.machine()]
    code: list[tuple[int, int | str, int | str, int]] = []  # (op, jump if true, jump if false, k)

    def emit(op: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        code.append((op, jt, jf, k))

    emit(_LD_ABS, 4)  # seccomp_data.arch
    emit(_JEQ, arch, 0, "enosys")  # another ABI (int 0x80 on x86_64): nothing at all
    emit(_LD_ABS, 0)  # seccomp_data.nr
    if arch == 0xC000003E:
        emit(_JGE, _X32_BIT, "enosys", 0)
    for nr in sorted(refused.values()):
        emit(_JEQ, nr, "eperm", 0)
    emit(_JEQ, sys_socket, "socket", 0)
    emit(_JEQ, sys_socketpair, "socketpair", 0)
    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(code)

    emit(_RET, _RET_ALLOW)
    label("socket")
    emit(_LD_ABS, 16)  # args[0], low half: the address family
    if allow_inet:  # harmless in an empty network namespace
        emit(_JEQ, socket.AF_INET, "allow", 0)
        emit(_JEQ, socket.AF_INET6, "allow", 0)
    emit(_RET, _RET_ERRNO | errno.EACCES)
    label("socketpair")
    emit(_LD_ABS, 24)  # args[1], low half: the type, with SOCK_NONBLOCK / SOCK_CLOEXEC
    emit(_AND, 0xF)
    emit(_JEQ, socket.SOCK_STREAM, "allow", 0)
    emit(_RET, _RET_ERRNO | errno.EACCES)
    label("eperm")
    emit(_RET, _RET_ERRNO | errno.EPERM)
    label("enosys")
    emit(_RET, _RET_ERRNO | errno.ENOSYS)
    label("allow")  # every jump goes forward: classic BPF has no other kind
    emit(_RET, _RET_ALLOW)
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        offsets = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        out += struct.pack("=HBBI", op, offsets[0], offsets[1], k)
    return bytes(out)


def install(libc: Any, allow_inet: bool) -> None:
    """Install the filter on this process (inherited by its threads and children); needs no_new_privs."""
    data = program(allow_inet)
    buf = ctypes.create_string_buffer(data, len(data))
    prog = _Fprog(len(data) // 8, ctypes.addressof(buf))
    if libc.lib.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp filter refused: {errno.errorcode.get(code, code)}")


class _Fprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))
