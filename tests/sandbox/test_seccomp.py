"""Host UNIX sockets are out of reach even through ctypes (issue 18, item 2): the seccomp filter."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import struct
import sys
import tempfile

import pytest

from assistant.sandbox import seccomp
from assistant.sandbox.limits import Limits
from assistant.sandbox.runner import isolation_report, run_program
from tests.sandbox.conftest import MODES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux only")


@pytest.fixture
def unix_server():
    """A real listening UNIX socket in a host temp dir that any uid may connect to (mode 0777)."""
    d = tempfile.mkdtemp(prefix="sandbox-unix-", dir="/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "service.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(8)
    server.settimeout(0.3)
    dgram_path = os.path.join(d, "log.sock")
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    os.chmod(dgram_path, 0o777)
    dgram.settimeout(0.3)
    yield path, server, dgram_path, dgram
    server.close()
    dgram.close()
    shutil.rmtree(d, ignore_errors=True)


CTYPES_CONNECT = """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def sockaddr(path):
    raw = path.encode()
    return (socket.AF_UNIX).to_bytes(2, "little") + raw + bytes(108 - len(raw))
try:
    socket.socket(socket.AF_UNIX).connect({path!r})
    print("python connected")
except OSError as e:
    print("python refused", type(e).__name__)
fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
print("libc socket", fd, os.strerror(ctypes.get_errno()))
if fd >= 0:
    print("libc connect", libc.connect(fd, sockaddr({path!r}), 110))
pair = (ctypes.c_int * 2)()
print("dgram pair", libc.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM, 0, pair))
if pair[0] > 0:
    print("sendto", libc.sendto(pair[0], b"hello", 5, 0, sockaddr({dgram!r}), 110))
print("stream pair", libc.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0, pair))
a, b = socket.socketpair()
a.sendall(b"ping")
print("socketpair works", b.recv(4) == b"ping")
own = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
print("own socket", own)
"""


@pytest.mark.parametrize("mode", MODES)
def test_host_unix_sockets_are_unreachable_even_from_ctypes(unix_server, mode):
    path, server, dgram_path, dgram = unix_server
    r = run_program(CTYPES_CONNECT.format(path=path, dgram=dgram_path), Limits(timeout_s=10), mode=mode)
    assert r.passed, (r.detail, r.stderr)
    assert r.isolation.seccomp
    out = r.stdout
    assert "python refused PermissionError" in out
    assert "libc socket -1 Permission denied" in out and "libc connect" not in out
    assert "dgram pair -1" in out and "sendto" not in out
    assert "stream pair 0" in out and "socketpair works True" in out  # multiprocessing, asyncio keep working
    assert "own socket -1" in out  # nor can it listen on one that the host could reach in its directory
    with pytest.raises(socket.timeout):
        server.accept()
    with pytest.raises(socket.timeout):
        dgram.recv(16)


@pytest.mark.parametrize("mode", MODES)
def test_kernel_side_doors_are_closed(mode):
    program = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in (("io_uring_setup", 425), ("pidfd_getfd", 438)):
    ret = libc.syscall(nr, 0, 0, 0)
    print(name, ret, os.strerror(ctypes.get_errno()))
print("ptrace", libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))  # PTRACE_ATTACH to pid 1
"""
    if platform.machine() != "x86_64":
        pytest.skip("syscall numbers in this test are x86_64's")
    r = run_program(program, Limits(timeout_s=10), mode=mode)
    assert r.passed, r.stderr
    for name in ("io_uring_setup", "pidfd_getfd", "ptrace"):
        assert f"{name} -1 Operation not permitted" in r.stdout, r.stdout


def test_inet_sockets_exist_only_in_an_empty_network_namespace():
    program = "import socket\ntry:\n    socket.socket()\n    print('made')\nexcept OSError as e:\n    print('refused', e.errno)\n"
    weak = run_program(program, Limits(timeout_s=10), mode="none")
    assert weak.passed and weak.stdout.strip().startswith("refused")  # no network namespace: no sockets at all
    if isolation_report().network:
        strong = run_program(program, Limits(timeout_s=10))
        assert strong.passed and strong.stdout.strip() == "made"


def test_the_filter_is_well_formed():
    for machine in ("x86_64", "aarch64"):
        for inet in (True, False):
            code = seccomp.program(inet, machine)
            assert len(code) % 8 == 0 and 0 < len(code) // 8 < 4096
            n = len(code) // 8
            for i in range(n):
                op, jt, jf, _ = struct.unpack_from("=HBBI", code, 8 * i)
                if op & 0x07 == 0x05:  # a jump: both targets inside the program, forward only
                    assert i + 1 + max(jt, jf) < n
            op, _, _, k = struct.unpack_from("=HBBI", code, 8 * (n - 1))
            assert op == 0x06 and k == 0x7FFF0000  # ends by allowing
