"""Safe extraction of zip and tar archives from sources we do not control.

Refused: members that escape the target (absolute paths, `..`), links, devices, and sizes
beyond the configured limits (checked on the declared sizes and again while writing, so a
lying header cannot inflate past them). Extraction goes to a temporary directory that is
renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from tasks.config import ExtractLimits
from tasks.errors import PipelineError

COPY_CHUNK = 1 << 20
DONE_MARKER = ".extracted"


class ArchiveError(PipelineError):
    """The archive is hostile, corrupt or too large; the message names the archive and member."""


def safe_member_path(name: str, archive: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"{archive}: member {name!r} escapes the target directory")
    return path


def _zip_members(zf: zipfile.ZipFile, archive: str) -> Iterator[tuple[str, int, bool]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link")
        yield info.filename, info.file_size, info.is_dir()


def _tar_members(tf: tarfile.TarFile, archive: str) -> Iterator[tuple[str, int, bool]]:
    for info in tf.getmembers():
        if info.issym() or info.islnk():
            raise ArchiveError(f"{archive}: member {info.name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise ArchiveError(f"{archive}: member {info.name!r} is not a regular file")
        yield info.name, info.size, info.isdir()


def _copy_bounded(src: IO[bytes], dest: Path, limit: int, name: str, archive: str) -> int:
    written = 0
    with dest.open("wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise ArchiveError(f"{archive}: member {name!r} inflates past {limit} bytes")
            out.write(chunk)
    return written


def _open(archive: Path) -> zipfile.ZipFile | tarfile.TarFile:
    with archive.open("rb") as fh:
        magic = fh.read(4)
    try:
        if zipfile.is_zipfile(archive):
            return zipfile.ZipFile(archive)
        if magic == b"PK\x03\x04":
            raise ArchiveError(f"{archive.name}: zip archive is truncated or corrupt (no central directory)")
        return tarfile.open(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        detail = str(exc).splitlines()[0]
        raise ArchiveError(f"{archive.name}: not a zip or tar archive, or truncated/corrupt ({detail})") from exc


def extract(archive: Path, dest: Path, limits: ExtractLimits) -> Path:
    """Extract `archive` into `dest` once; a completed extraction is reused."""
    if (dest / DONE_MARKER).exists():
        return dest
    name = archive.name
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with _open(archive) as arc:
            members = list(_zip_members(arc, name) if isinstance(arc, zipfile.ZipFile) else _tar_members(arc, name))
            if len(members) > limits.max_members:
                raise ArchiveError(f"{name}: {len(members)} members, more than the limit {limits.max_members}")
            declared = sum(size for _, size, _ in members)
            if declared > limits.max_total_bytes:
                raise ArchiveError(f"{name}: declares {declared} bytes, more than the limit {limits.max_total_bytes}")
            total = 0
            for member, size, is_dir in members:
                rel = safe_member_path(member, name)
                target = tmp.joinpath(*rel.parts)
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if size > limits.max_member_bytes:
                    raise ArchiveError(f"{name}: member {member!r} declares {size} bytes, over the limit")
                target.parent.mkdir(parents=True, exist_ok=True)
                with _read(arc, member) as src:
                    total += _copy_bounded(src, target, limits.max_member_bytes, member, name)
                if total > limits.max_total_bytes:
                    raise ArchiveError(f"{name}: extracted data passes the limit {limits.max_total_bytes}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArchiveError(f"{name}: corrupt or truncated archive ({exc})") from exc
    except ArchiveError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / DONE_MARKER).touch()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _read(arc: zipfile.ZipFile | tarfile.TarFile, member: str) -> IO[bytes]:
    if isinstance(arc, zipfile.ZipFile):
        return arc.open(member)
    handle = arc.extractfile(member)
    if handle is None:
        raise ArchiveError(f"member {member!r} has no data")
    return handle
