import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tasks.archive import DONE_MARKER, ArchiveError, extract
from tasks.config import ExtractLimits

LIMITS = ExtractLimits(max_members=100, max_member_bytes=10_000, max_total_bytes=50_000)


def make_zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def make_tar(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tf.addfile(info)
    return path


def test_good_zip_extracts_once_and_is_reused(tmp_path: Path) -> None:
    arc = make_zip(tmp_path / "ok.zip", {"Actor_01/a.wav": b"x" * 10, "top.txt": b"hi"})
    dest = extract(arc, tmp_path / "out", LIMITS)
    assert (dest / "Actor_01" / "a.wav").read_bytes() == b"x" * 10
    assert (dest / DONE_MARKER).exists()
    (dest / "top.txt").write_text("changed")
    extract(arc, tmp_path / "out", LIMITS)  # already complete: not redone
    assert (dest / "top.txt").read_text() == "changed"


def test_good_tar_extracts(tmp_path: Path) -> None:
    arc = make_tar(tmp_path / "ok.tar.gz", {"CAL500/songNames.txt": b"a-b\n"})
    assert (extract(arc, tmp_path / "out", LIMITS) / "CAL500" / "songNames.txt").read_text() == "a-b\n"


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (lambda p: make_zip(p / "a.zip", {"../../evil.txt": b"x"}), "escapes the target"),
        (lambda p: make_zip(p / "a.zip", {"ok/../../evil.txt": b"x"}), "escapes the target"),
        (lambda p: make_zip(p / "a.zip", {"/etc/evil.txt": b"x"}), "absolute path"),
        (lambda p: make_zip(p / "a.zip", {"ok.txt": b"x"}, symlink="link"), "'link' is a symbolic link"),
        (lambda p: make_tar(p / "a.tgz", {"../evil.txt": b"x"}), "escapes the target"),
        (lambda p: make_tar(p / "a.tgz", {"ok.txt": b"x"}, link=("l", "/etc/passwd")), "'l' is a link"),
        (lambda p: make_zip(p / "a.zip", {"big.bin": b"\0" * 20_000}), "over the limit"),
        (lambda p: make_zip(p / "a.zip", {f"f{i}": b"x" * 9_000 for i in range(7)}), "more than the limit"),
        (lambda p: make_zip(p / "a.zip", {f"f{i}": b"" for i in range(101)}), "101 members"),
    ],
    ids=["zip-slip", "zip-slip-nested", "absolute", "zip-symlink", "tar-slip", "tar-symlink", "member-size",
         "total-size", "member-count"],
)
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path: Path, builder, message: str) -> None:
    arc = builder(tmp_path)
    with pytest.raises(ArchiveError, match=message) as err:
        extract(arc, tmp_path / "out", LIMITS)
    assert arc.name in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_lying_header_cannot_inflate_past_the_limit(tmp_path: Path) -> None:
    arc = make_zip(tmp_path / "bomb.zip", {"bomb.bin": b"\0" * 50_000})
    raw = bytearray(arc.read_bytes())
    # Rewrite the declared uncompressed size (central directory) to look small.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (100).to_bytes(4, "little")
    arc.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        extract(arc, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_truncated_archive_is_a_clear_error(tmp_path: Path) -> None:
    arc = make_zip(tmp_path / "t.zip", {f"f{i}.bin": bytes(range(256)) * 30 for i in range(5)})
    arc.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(ArchiveError, match=r"t\.zip: .*(truncated|corrupt)"):
        extract(arc, tmp_path / "out", LIMITS)
