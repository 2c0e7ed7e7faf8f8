"""Limits and isolation inside the sandbox: namespaces, mounts, privilege drop, rlimits, the audit hook.

Runs in the sandbox's own processes, imported by ``child.py`` (stdlib only, no package needed).
What each piece does and does not stop: docs/sandbox.md.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

_MIB = 1024 * 1024

# Linux constants (<sched.h>, <sys/mount.h>, <linux/prctl.h>); ctypes has no names for them.
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_FLAGS = MappingProxyType(
    {
        "nosuid": MS_NOSUID,
        "nodev": MS_NODEV,
        "noexec": MS_NOEXEC,
        "noatime": 1024,
        "nodiratime": 2048,
        "relatime": 1 << 21,
        "strictatime": 1 << 24,
    }
)
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_KEEPCAPS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 8, 36, 38
PR_GET_SECCOMP, CAP_DAC_READ_SEARCH = 21, 2

# Audit events the program may not raise. Sockets: no network even where namespaces fail.
# gc introspection: the cheapest way to find the run's nonce in memory.
_BLOCKED = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
)
_BLOCKED_SPAWN = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "subprocess.Popen",
        "pty.spawn",
        "os.kill",
        "os.killpg",
    }
)
# Events that change the filesystem: (position of a path, position of its dir_fd or None).
_WRITES = MappingProxyType(
    {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, None),),
        "shutil.rmtree": ((0, 1),),
        "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)),
        "os.symlink": ((1, 2),),
        "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),),
    }
)


class Libc:
    """The few Linux syscalls the runner needs, through ctypes; raises OSError on failure."""

    def __init__(self) -> None:
        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.lib.unshare.argtypes = [ctypes.c_int]

    def _check(self, ret: int, what: str) -> None:
        if ret != 0:
            code = self.ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    def unshare(self, flags: int) -> None:
        self._check(self.lib.unshare(flags), "unshare")

    def prctl(self, option: int, arg: int = 0) -> None:
        self._check(self.lib.prctl(option, arg, 0, 0, 0), f"prctl({option})")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)
        self._check(self.lib.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def mount_setattr(self, path: str, recursive: bool, set_: int = 0, clear: int = 0) -> None:
        c = ctypes
        attr = _MountAttr(set_, clear, 0, 0)
        ret = self.lib.syscall(
            c.c_long(_SYS_MOUNT_SETATTR),
            c.c_int(_AT_FDCWD),
            c.c_char_p(os.fsencode(path)),
            c.c_uint(_AT_RECURSIVE if recursive else 0),
            c.byref(attr),
            c.c_size_t(c.sizeof(attr)),
        )
        self._check(ret, f"mount_setattr {path}")

    def drop_bounding(self, keep: int | None) -> None:
        """Empty the bounding set but ``keep``: nothing can be gained back through exec."""
        for cap in range(64):
            failed = cap != keep and self.lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            if failed and ctypes.get_errno() == errno.EINVAL:
                break

    def set_capabilities(self, mask: int) -> None:
        """Set the effective and permitted capabilities to ``mask`` (caps 0-31), none inheritable."""
        data = (_CapData * 2)()
        data[0].effective = data[0].permitted = mask
        self._check(self.lib.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def prepare(config: dict, libc: Libc | None) -> dict:
    """In the runner: namespaces and mounts; returns the facts the monitor reports.

    A root caller gives each run its own uid (``config["uid"]``, else nobody): RLIMIT_NPROC is
    counted per uid, and a 0700 working directory owned by that uid is closed to every other run.
    """
    workdir = config["workdir"]
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    if root:
        uid, gid = (config["uid"], config["uid"]) if config.get("uid") is not None else _nobody()
    facts: dict = {
        "mode": "none",
        "network": False,
        "pid": False,
        "readonly_fs": False,
        "private_proc": False,
        "uid": uid,
        "gid": gid,
        "dropped_root": False,
        "read_search": False,
        "seccomp": False,
        "hidden": [],
        "notes": [],
        "nproc_base": 0,
        "private_mounts": False,
    }
    notes = facts["notes"]
    plan = config["plan"]
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    if libc is None:
        notes.append("not Linux: no namespaces, no no_new_privs, no seccomp")
    elif root and plan in ("auto", "root-namespaces"):
        try:
            libc.unshare(flags)
            facts["mode"] = "root-namespaces"
        except OSError as e:
            notes.append(f"namespaces unavailable to root ({e})")
    elif not root and plan in ("auto", "user-namespaces"):
        try:
            libc.unshare(CLONE_NEWUSER | flags)
        except OSError as e:
            notes.append(f"user namespaces unavailable ({e})")
        else:
            _map_ids(os.getuid(), os.getgid())  # a failure here is fatal: we are already inside
            facts["mode"] = "user-namespaces"
    elif plan == "none":
        notes.append("namespaces not used (the weaker mode was asked for, or the probe found none that work)")
    if libc is not None and facts["mode"] != "none":
        facts["network"] = facts["pid"] = True
        try:
            libc.mount(None, "/", None, MS_REC | MS_PRIVATE)  # first: no mount below may reach the host
            facts["private_mounts"] = True
            parent = os.path.dirname(os.path.realpath(workdir))  # other runs' working directories
            hidden = [h for h in (_caller_home(), parent) if h and h != "/"]
            ro, covered = _private_mounts(libc, workdir, _needed_paths(config), hidden, uid, gid, notes)
            facts["readonly_fs"], facts["hidden"] = ro, covered
        except OSError as e:
            notes.append(f"mounts left as they are ({e})")
    if root:
        stdlib = os.path.dirname(os.__file__)
        blocked = [p for p in (stdlib, os.path.dirname(workdir)) if not _reachable(p, uid, gid)]
        facts["dropped_root"] = True
        if blocked:
            facts["read_search"] = True
            notes.append(
                f"the program keeps CAP_DAC_READ_SEARCH (reads anything, writes nothing more): "
                f"uid {uid} cannot reach {blocked[0]}"
            )
        _chown_tree(workdir, uid, gid)  # the program owns its directory
    if facts["mode"] == "user-namespaces":
        facts["nproc_base"] = 2  # the runner and the monitor, counted inside the namespace
    else:
        # Counted per uid across the whole machine: allow for what that uid already runs.
        facts["nproc_base"] = count_tasks(uid) + (0 if root else 1)
    return facts


def _chown_tree(path: str, uid: int, gid: int) -> None:
    for root, dirs, names in os.walk(path):
        for p in [root, *(os.path.join(root, n) for n in dirs + names)]:
            os.lchown(p, uid, gid)


def _map_ids(uid: int, gid: int) -> None:
    """Map our own ids into the new user namespace (the only mapping an unprivileged user may write)."""
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
    except FileNotFoundError:  # kernels before 3.19
        pass
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1\n")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1\n")


def _needed_paths(config: dict) -> list[str]:
    """Directories the program must read: the interpreter, sys.path, extra_path, the working dir."""
    candidates = [
        *sys.path[1:],
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *config["extra_path"],
        config["workdir"],
    ]
    return sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)})


def _can_search(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _first_blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The top-most proper ancestor of ``path`` that ``uid`` cannot enter (mode bits only)."""
    current = "/"
    for part in Path(path).parts[1:]:
        if not _can_search(current, uid, gid):
            return current
        current = os.path.join(current, part)
    return None


def _reachable(path: str, uid: int, gid: int) -> bool:
    try:
        return _first_blocked_ancestor(path, uid, gid) is None and _can_search(path, uid, gid)
    except OSError:
        return False


def _private_mounts(
    libc: Libc, workdir: str, needed: list[str], hidden: list[str], uid: int, gid: int, notes: list[str]
) -> tuple[bool, list[str]]:
    """Make every mount read-only but the working directory; (whether that worked, covered dirs).

    Runs in a new mount namespace whose mounts are already private. Each of ``hidden`` (the
    caller's home: keys, tokens; the parent of the working directory: other runs) is covered by
    an empty tmpfs, and so is any directory that the program's uid could not enter although the
    program needs something inside it (a Python under /root when root drops to nobody);
    what the program needs is bound back in.
    """
    covered = _cover(libc, needed, hidden, uid, gid, notes, os.path.realpath(workdir))
    libc.mount(workdir, workdir, None, MS_BIND | MS_REC)
    try:
        libc.mount_setattr("/", True, set_=_MOUNT_ATTR_RDONLY)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            notes.append(f"read-only mounts failed ({e})")
            return False, covered
        return _remount_readonly(libc, workdir, notes), covered  # kernels before 5.12
    try:
        libc.mount_setattr(workdir, False, clear=_MOUNT_ATTR_RDONLY)
    except OSError as e:
        libc.mount_setattr("/", True, clear=_MOUNT_ATTR_RDONLY)
        notes.append(f"read-only mounts undone: the working directory stayed read-only ({e})")
        return False, covered
    return True, covered


def _mounts() -> list[tuple[str, int]]:
    """(mount point, preserved MS_* flags) from /proc/self/mountinfo."""
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for spaces
            options = fields[5].split(",")
            result.append((point, sum(MS_FLAGS.get(o, 0) for o in options)))
    return result


def _remount_readonly(libc: Libc, workdir: str, notes: list[str]) -> bool:
    """Fallback for kernels without mount_setattr: remount each mount read-only by hand."""
    ok = True
    workdir = os.path.realpath(workdir)
    for point, flags in _mounts():
        if point == workdir:
            continue
        try:
            libc.mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            if point == "/":
                ok = False
            notes.append(f"could not make {point} read-only ({e})")
    return ok


def _caller_home() -> str | None:
    """The caller's home directory (not $HOME: the runner's environment is already scrubbed)."""
    try:
        import pwd

        home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        return None
    return home if home != "/" and os.path.isdir(home) else None


def _cover(
    libc: Libc, needed: list[str], hidden: list[str], uid: int, gid: int, notes: list[str], keep: str
) -> list[str]:
    """Lay a tmpfs over each hidden or blocking directory, then bind back what is needed below it.

    ``keep`` (the working directory) always comes back whole: the program is about to own it.
    """
    sep = os.sep
    hidden = [h for h in hidden if not any(p == h or h.startswith(p + sep) for p in needed)]
    groups: dict[str, list[str]] = {h: [] for h in hidden}
    for p in needed:
        anchors = [h for h in hidden if p.startswith(h + sep)]
        blocked = _first_blocked_ancestor(p, uid, gid)
        if blocked not in (None, "/"):
            anchors.append(blocked)
        if anchors:
            groups.setdefault(min(anchors, key=len), []).append(p)
    covered = []
    for anchor in sorted(groups, key=len):
        ps = groups[anchor]
        tops = [p for p in ps if not any(p.startswith(q + sep) for q in ps)]
        binds: list[_Bind] = []
        try:
            for p in tops:  # before the tmpfs hides them
                binds += _plan_binds(p, ps, uid, gid, keep)
            libc.mount("tmpfs", anchor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for b in binds:
                b.apply(libc)
            covered.append(anchor)
        except OSError as e:
            notes.append(f"could not cover {anchor} ({e})")
        finally:
            for b in binds:
                if b.fd is not None:
                    os.close(b.fd)
    return covered


@dataclass
class _Bind:
    """One thing to put back over a tmpfs: a directory or file bound from the host (fd), or a symlink."""

    path: str
    fd: int | None = None  # O_PATH; None: an empty directory of our own
    is_dir: bool = True
    link: str | None = None

    def apply(self, libc: Libc) -> None:
        parent = os.path.dirname(self.path)
        _makedirs_open(parent)
        if self.link is not None:
            os.symlink(self.link, self.path)
            return
        if self.is_dir:
            _makedirs_open(self.path)
        else:
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o644))
        if self.fd is not None:
            libc.mount(f"/proc/self/fd/{self.fd}", self.path, None, MS_BIND | MS_REC)


def _makedirs_open(path: str) -> None:
    """mkdir -p with 0755 whatever the umask: the program's uid must pass through."""
    if os.path.isdir(path):
        return
    _makedirs_open(os.path.dirname(path))
    os.mkdir(path)
    os.chmod(path, 0o755)


def _plan_binds(path: str, needed: list[str], uid: int, gid: int, keep: str) -> list[_Bind]:
    """How to bring ``path`` back: whole, or entry by entry when ``uid`` may not enter it itself.

    A 0700 directory the program needs (a checkout on sys.path that holds the venv) would stay
    closed if bound whole; rebuilt as a 0755 directory on the tmpfs, its entries bound one by one,
    each keeps its own mode and nothing above it is opened.
    """
    if path == keep or _can_search(path, uid, gid):
        return [_Bind(path, os.open(path, os.O_PATH | os.O_DIRECTORY))]
    binds = [_Bind(path)]
    for name in sorted(os.listdir(path)):
        entry = os.path.join(path, name)
        st = os.lstat(entry)
        if stat.S_ISLNK(st.st_mode):
            binds.append(_Bind(entry, link=os.readlink(entry)))
        elif stat.S_ISDIR(st.st_mode) and any(q == entry or q.startswith(entry + os.sep) for q in needed):
            binds += _plan_binds(entry, needed, uid, gid, keep)
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            fd = os.open(entry, os.O_PATH | os.O_NOFOLLOW)
            binds.append(_Bind(entry, fd, is_dir=stat.S_ISDIR(st.st_mode)))
    return binds


def count_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def drop_privileges(facts: dict, libc: Libc | None) -> None:
    """Become the run's own uid (a root caller), or shed every capability (user namespaces, root kept)."""
    if facts["dropped_root"]:
        keep = CAP_DAC_READ_SEARCH if facts.get("read_search") else None
        if libc:
            libc.drop_bounding(keep)
            if keep is not None:
                libc.prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(facts["gid"], facts["gid"], facts["gid"])
        os.setresuid(facts["uid"], facts["uid"], facts["uid"])
        if libc and keep is not None:
            libc.set_capabilities(1 << keep)  # read and search only: no writes, no signals to others
            libc.prctl(PR_SET_KEEPCAPS, 0)
        if os.geteuid() == 0:
            raise OSError("still root after setresuid")
    elif libc and (facts["mode"] == "user-namespaces" or os.geteuid() == 0):
        libc.drop_bounding(None)
        libc.set_capabilities(0)
    if libc:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binaries, no capabilities through exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
        libc.prctl(PR_SET_DUMPABLE, 1)  # its own /proc/self stays readable to it


def apply_rlimits(limits: dict, nproc_base: int) -> None:
    import resource

    wanted = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_AS": (limits["memory_mb"] * _MIB,) * 2,
        "RLIMIT_CPU": (limits["cpu_limit_s"], limits["cpu_limit_s"] + 1),
        "RLIMIT_FSIZE": (limits["file_size_mb"] * _MIB,) * 2,
        "RLIMIT_NOFILE": (limits["open_files"],) * 2,
        "RLIMIT_NPROC": (nproc_base + limits["processes"],) * 2,
    }
    for name, (soft, hard) in wanted.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def install_guard(workdir: str, allow_subprocess: bool) -> None:
    """An audit hook: defence in depth under the namespaces, the only guard where they fail.

    Hooks cannot be removed from Python code; ctypes can still go around it. ``os.mkfifo`` and
    ``os.mknod`` raise no audit event, so they are wrapped instead.
    """
    blocked = _BLOCKED if allow_subprocess else _BLOCKED | _BLOCKED_SPAWN
    me = os.getpid()
    home = os.path.realpath(workdir)
    # Every name the hook uses is bound now: the program may patch os, os.path, stat or builtins.
    realpath, fspath, sep, readlink, stat_, join = (
        os.path.realpath,
        os.fspath,
        os.sep,
        os.readlink,
        os.stat,
        os.path.join,
    )
    is_chr, anonymous, writes = stat.S_ISCHR, _anonymous, _WRITES
    in_memory, db_path = _sqlite_in_memory, _sqlite_path
    isinstance_, int_, bytes_, len_, refuse = isinstance, int, bytes, len, PermissionError
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def resolve(p: Any, dir_fd: Any = None) -> str | None:
        """The real path that ``p`` (a path, or a descriptor) names; None if it cannot be told."""
        try:
            if isinstance_(p, int_):
                return readlink(f"/proc/self/fd/{p}")
            p = fspath(p)
            p = p.decode(errors="surrogateescape") if isinstance_(p, bytes_) else p
            if isinstance_(dir_fd, int_) and dir_fd >= 0 and not p.startswith(sep):
                p = join(readlink(f"/proc/self/fd/{dir_fd}"), p)
            return realpath(p)
        except (OSError, TypeError, ValueError):
            return None

    def inside(p: Any, dir_fd: Any = None) -> bool:
        real = resolve(p, dir_fd)
        if real is None:
            return False
        return real == home or real.startswith(home + sep) or anonymous(real)

    def writable(p: Any) -> bool:
        """Inside the working directory, a character device (/dev/null, a tty) or an open pipe."""
        if isinstance_(p, int_) or inside(p):
            return True
        try:
            return is_chr(stat_(p).st_mode)
        except (OSError, TypeError, ValueError):
            return False

    def guard(event: str, args: tuple) -> None:
        if event in blocked:
            if event == "os.kill" and args and args[0] in (0, me):
                return
            raise refuse(f"{event} is not allowed in the sandbox")
        if event == "open":
            path, _, flags = args
            if isinstance_(flags, int_) and flags & write_flags and not writable(path):
                raise refuse(f"writing outside the sandbox's directory is not allowed: {path}")
        elif event == "sqlite3.connect":
            database = args[0] if args else None
            if not in_memory(database) and not inside(db_path(database)):
                raise refuse(f"sqlite3.connect outside the sandbox's directory is not allowed: {database}")
        elif event in writes:
            for i, fd in writes[event]:
                dir_fd = args[fd] if fd is not None and fd < len_(args) else None
                if i < len_(args) and args[i] is not None and not inside(args[i], dir_fd):
                    raise refuse(f"{event} outside the sandbox's directory is not allowed: {args[i]}")

    def guarded(name: str, call: Any) -> Any:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if not inside(path, kwargs.get("dir_fd")):
                raise refuse(f"os.{name} outside the sandbox's directory is not allowed: {path}")
            return call(path, *args, **kwargs)

        wrapper.__name__ = wrapper.__qualname__ = name
        return wrapper

    import posix

    for name in ("mkfifo", "mknod"):
        if hasattr(posix, name):
            wrapped = guarded(name, getattr(posix, name))
            setattr(posix, name, wrapped)
            setattr(os, name, wrapped)
    sys.addaudithook(guard)


def _anonymous(real: str) -> bool:
    """A descriptor's link that names no file ("pipe:[12]", "socket:[7]", "anon_inode:[eventfd]")."""
    head, _, name = real.rpartition("/")
    if head and not (head.startswith("/proc/") and head.endswith("/fd")):
        return False  # a real directory may hold a file called "pipe:[1]"; /proc/<pid>/fd cannot
    return name.startswith(("pipe:[", "socket:[", "anon_inode:"))


def _sqlite_in_memory(database: Any) -> bool:
    if isinstance(database, bytes):
        database = database.decode(errors="surrogateescape")
    if not isinstance(database, str):
        return False
    return database in ("", ":memory:") or (database.startswith("file:") and "mode=memory" in database)


def _sqlite_path(database: Any) -> Any:
    """The file a sqlite3 database name opens; a ``file:`` URI's path part is checked as well as the name."""
    if isinstance(database, bytes):
        database = database.decode(errors="surrogateescape")
    if isinstance(database, str) and database.startswith("file:"):
        from urllib.parse import unquote

        path = unquote(database[5:].split("?", 1)[0].split("#", 1)[0])
        if path.startswith("//"):  # file://host/path
            path = "/" + path[2:].split("/", 1)[-1]
        return path or database
    return database
