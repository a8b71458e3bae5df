"""cxrmtl.data.download against a local mirror (tests/kit/mirror.py) serving a tiny generated release.

Each scenario of docs/download.md: a normal download that load_index reads, a dropped connection resumed with a
Range request, a server that ignores Range, a damaged archive (fetched again, or reported), a full disk, a rerun
that fetches nothing, unsafe archives, offline, HTTP errors, metadata by hand and a Kaggle copy.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import socket
import tarfile
from pathlib import Path

import pytest
from mirror import Knobs, MirrorServer, pack_archive, tiny_release

from cxrmtl import labels
from cxrmtl.data import download as D
from cxrmtl.data import release
from cxrmtl.data.nih import load_index
from cxrmtl.errors import DownloadError

ARCHIVES = release.ARCHIVE_NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return tiny_release(tmp_path_factory.mktemp("release"))


def _opts(server: MirrorServer, **kw: object) -> D.DownloadOptions:
    return D.DownloadOptions(mirror=server.url, backoff_s=0.01, timeout_s=10, **kw)


def _manifest(dest: Path) -> dict:
    return json.loads((dest / D.MANIFEST_NAME).read_text())["files"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(data: bytes) -> list[str]:
    """Image names inside an archive."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return [Path(m.name).name for m in tar.getmembers() if m.name.endswith(".png")]


def _leftovers(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_release_constants_match_the_facts() -> None:
    assert len(release.ARCHIVE_IDS) == labels.NIH_ARCHIVES == len(set(release.ARCHIVE_IDS))
    assert release.ARCHIVE_NAMES[0] == "images_001.tar.gz" and release.ARCHIVE_NAMES[-1] == "images_012.tar.gz"
    assert release.ARCHIVE_URLS["images_001.tar.gz"] == (
        "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz")
    assert release.ARCHIVE_URLS["images_012.tar.gz"].endswith("/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz")
    assert sum(release.ARCHIVE_IMAGES.values()) == labels.NIH_NUM_IMAGES
    assert 40e9 < sum(release.APPROX_ARCHIVE_BYTES.values()) <= 45e9


def test_plan_files_addresses() -> None:
    nih = D.plan_files()
    assert [f.name for f in nih] == [*release.METADATA_NAMES, *ARCHIVES]
    assert all(f.url is None for f in nih if f.kind == "metadata")  # no direct NIH address is known: never invented
    assert [f.url for f in nih if f.kind == "archive"] == [release.ARCHIVE_URLS[n] for n in ARCHIVES]
    mirrored = D.plan_files(only="images", mirror="http://m.example/nih")
    assert [f.url for f in mirrored] == [f"http://m.example/nih/{n}" for n in ARCHIVES]
    assert [f.name for f in D.plan_files(only="metadata", mirror="https://m/")] == list(release.METADATA_NAMES)
    with pytest.raises(DownloadError, match="--only: 'everything' is not one of all, metadata, images"):
        D.plan_files(only="everything")
    with pytest.raises(DownloadError, match="--mirror: 'ftp://x' is not an http"):
        D.plan_files(mirror="ftp://x")


def test_normal_download_through_redirects_loads_and_rerun_fetches_nothing(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "nih"
    with MirrorServer(files, Knobs(redirect=True)) as server:  # Box answers its static links with a redirect
        report = D.download_release(dest, _opts(server, jobs=3))
        served = [r for r in server.gets() if r.status != 302]
        assert sorted(r.name for r in served) == sorted(files)  # each file fetched once, whole, after its redirect
        assert all(r.status == 200 and r.range is None for r in served)
        assert {r.status for r in server.log if r.method == "HEAD"} == {302, 200}  # size probes stay HEADs
        server.log.clear()
        again = D.download_release(dest, _opts(server))
        assert server.gets() == []  # the rerun transfers nothing
    assert sorted(report.downloaded) == sorted(files) and sorted(report.extracted) == sorted(ARCHIVES)
    assert report.resumed == [] and report.refetched == []
    assert sorted(again.skipped) == sorted(files) and again.downloaded == [] and again.extracted == []
    entries = _manifest(dest)
    for name in ARCHIVES:
        assert entries[name]["sha256"] == _sha(files[name]) and entries[name]["size"] == len(files[name])
        assert entries[name]["extracted"] is True
        assert (dest / "archives" / name).read_bytes() == files[name]
    index = load_index(dest)
    assert len(index) == report.images == again.images
    assert (index.table["path"] != "").all()  # every image of Data_Entry found in the flat images/
    assert all(Path(p).parent == dest / "images" for p in index.table["path"])
    assert _leftovers(dest) == []
    # the tiny release's split lists are not NIH's: said, and recorded
    assert entries["train_val_list.txt"]["matches_release"] is False
    assert any("not the official split" in n for n in report.notes)


def test_dropped_connection_resumes_with_a_range_request(files: dict[str, bytes], tmp_path: Path) -> None:
    name, cut = "images_003.tar.gz", len(files["images_003.tar.gz"]) // 2
    dest = tmp_path / "nih"
    with MirrorServer(files, Knobs(drop_after={name: cut})) as server:
        report = D.download_release(dest, _opts(server, only="images"))
        gets = server.gets(name)
    assert [(g.range, g.status) for g in gets] == [(None, 200), (f"bytes={cut}-", 206)]  # not from zero
    assert report.resumed == [name]
    assert _manifest(dest)[name]["sha256"] == _sha(files[name])
    assert report.bytes_transferred == sum(len(files[n]) for n in ARCHIVES)  # no byte fetched twice
    assert all((dest / "images" / m).is_file() for m in _members(files[name]))


def test_part_file_from_an_earlier_run_is_resumed(files: dict[str, bytes], tmp_path: Path) -> None:
    name = "images_007.tar.gz"
    dest = tmp_path / "nih"
    part = dest / "archives" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[name][:1000])  # what a killed run leaves
    with MirrorServer(files) as server:
        report = D.download_release(dest, _opts(server, only="images"))
        assert [g.range for g in server.gets(name)] == ["bytes=1000-"]
    assert report.resumed == [name] and (dest / "archives" / name).read_bytes() == files[name]


def test_server_ignoring_range_restarts_cleanly(files: dict[str, bytes], tmp_path: Path) -> None:
    name = "images_002.tar.gz"
    dest = tmp_path / "nih"
    part = dest / "archives" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[name][:1500])
    with MirrorServer(files, Knobs(ignore_range=True)) as server:
        report = D.download_release(dest, _opts(server, only="images"))
        assert [(g.range, g.status) for g in server.gets(name)] == [("bytes=1500-", 200)]
    assert (dest / "archives" / name).read_bytes() == files[name]  # rewritten, not appended to
    assert report.resumed == []


def test_part_file_that_is_already_complete(files: dict[str, bytes], tmp_path: Path) -> None:
    name = "images_004.tar.gz"
    dest = tmp_path / "nih"
    part = dest / "archives" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[name])  # killed between the last byte and the rename
    with MirrorServer(files) as server:
        D.download_release(dest, _opts(server, only="images"))
        assert [(g.range, g.status) for g in server.gets(name)] == [(f"bytes={len(files[name])}-", 416)]
    assert _manifest(dest)[name]["sha256"] == _sha(files[name])


def test_damaged_archive_is_fetched_again(files: dict[str, bytes], tmp_path: Path) -> None:
    name = "images_005.tar.gz"
    dest = tmp_path / "nih"
    with MirrorServer(files, Knobs(corrupt={name: 1})) as server:
        report = D.download_release(dest, _opts(server, only="images"))
        assert len(server.gets(name)) == 2
    assert report.refetched == [name] and any("damaged archive" in n for n in report.notes)
    assert _manifest(dest)[name]["sha256"] == _sha(files[name])
    for member in _members(files[name]):
        assert (dest / "images" / member).read_bytes() == _member_bytes(files[name], member)


def _member_bytes(archive: bytes, member: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.extractfile(f"images/{member}").read()


def test_archive_damaged_twice_is_reported_and_not_marked_complete(files: dict[str, bytes], tmp_path: Path) -> None:
    name = "images_006.tar.gz"
    dest = tmp_path / "nih"
    with MirrorServer(files, Knobs(corrupt={name: 99})) as server, pytest.raises(
        DownloadError, match=rf"{name}: damaged archive .* twice in a row from {server.url}{name}"
    ):
        D.download_release(dest, _opts(server, only="images", jobs=1))
    assert name not in _manifest(dest)
    assert not (dest / "archives" / name).exists()
    assert not any((dest / "images" / m).exists() for m in _members(files[name]))  # no untrusted bytes left
    assert not (dest / "archives" / f"{name}.part").exists()
    assert list((dest / "images").glob(".*.tmp")) == []  # (a transfer stopped mid-way keeps its .part: resumable)


class _FullDisk:
    """A file whose every write fails the way a full disk makes it fail."""

    def write(self, _data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_unpacking_then_rerun(
    files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "nih"
    real = D._write_chunk
    writes = {"images": 0}

    def full_disk(fh: object, data: bytes, *, what: Path) -> None:
        if what == dest / "images":
            writes["images"] += 1
            if writes["images"] > 5:  # a few images fit, then the disk is full
                fh = _FullDisk()
        real(fh, data, what=what)

    monkeypatch.setattr(D, "_write_chunk", full_disk)
    with MirrorServer(files) as server:
        with pytest.raises(DownloadError, match=r"images: disk full \(No space left on device\); free some space"):
            D.download_release(dest, _opts(server, jobs=1))
        entries = _manifest(dest)
        unpacked = [n for n in ARCHIVES if entries.get(n, {}).get("extracted")]
        broken = next(n for n in ARCHIVES if n in entries and not entries[n]["extracted"])
        assert len(unpacked) < len(ARCHIVES)  # the one whose unpack failed is not taken as complete
        # No half-written image under any name; an archive whose download was under way stays as its resumable .part.
        assert [p for p in _leftovers(dest) if p.parent.name != "archives"] == []
        assert not (dest / D.STATE_DIR / f"{broken}.members").exists()
        monkeypatch.setattr(D, "_write_chunk", real)
        server.log.clear()
        report = D.download_release(dest, _opts(server, jobs=1))
        assert broken not in {g.name for g in server.gets()}  # its archive was complete: unpacked, not fetched
    assert broken in report.extracted and set(unpacked) <= set(report.skipped)
    assert (load_index(dest).table["path"] != "").sum() == report.images


def test_disk_full_while_downloading_keeps_the_part(
    files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "nih"
    real = D._write_chunk

    def full_disk(fh: object, data: bytes, *, what: Path) -> None:
        real(_FullDisk() if what.name == "images_001.tar.gz.part" else fh, data, what=what)

    monkeypatch.setattr(D, "_write_chunk", full_disk)
    with MirrorServer(files) as server, pytest.raises(DownloadError, match=r"images_001\.tar\.gz\.part: disk full"):
        D.download_release(dest, _opts(server, only="images", jobs=1))
    assert not (dest / "archives" / "images_001.tar.gz").exists()
    assert (dest / "archives" / "images_001.tar.gz.part").is_file()  # a rerun resumes from it


def test_not_enough_free_space_is_refused_before_writing(
    files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "nih"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(D.shutil, "disk_usage", lambda _p: usage._replace(free=500 * 10**6))
    with MirrorServer(files) as server:
        with pytest.raises(DownloadError, match=r"needs about 1\.1 GB free \(downloads 0\.0 GB \+ unpacking 0\.0 GB "
                                                r"\+ 1\.1 GB spare\), only 0\.5 GB free"):
            D.download_release(dest, _opts(server, only="images"))
        assert server.gets() == []
    assert not (dest / "archives").exists()


def test_nih_sizes_are_estimated_when_the_server_does_not_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = D._Job(tmp_path, D.DownloadOptions())
    monkeypatch.setattr(job, "_remote_size", lambda _url: None)
    usage = shutil.disk_usage(tmp_path)._replace(free=10**9)
    monkeypatch.setattr(D.shutil, "disk_usage", lambda _p: usage)
    archives = D.plan_files(only="images")
    with pytest.raises(DownloadError, match=r"needs about 91\.1 GB free \(downloads 45\.0 GB \+ unpacking 45\.0 GB"):
        job._check_disk(archives, archives)


def test_changed_archive_or_missing_image_is_repaired_on_rerun(files: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "nih"
    with MirrorServer(files) as server:
        D.download_release(dest, _opts(server, only="images"))
        tampered = dest / "archives" / "images_008.tar.gz"
        tampered.write_bytes(tampered.read_bytes()[:-1] + b"x")
        lost = _members(files["images_009.tar.gz"])[0]
        (dest / "images" / lost).unlink()
        server.log.clear()
        report = D.download_release(dest, _opts(server, only="images"))
        assert [g.name for g in server.gets()] == ["images_008.tar.gz"]  # only the changed archive is fetched
    assert sorted(report.extracted) == ["images_008.tar.gz", "images_009.tar.gz"]
    assert (dest / "images" / lost).is_file()


def test_removed_archives_are_not_fetched_again_when_the_images_verify(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "nih"
    with MirrorServer(files) as server:
        D.download_release(dest, _opts(server, only="images"))
        shutil.rmtree(dest / "archives")  # a user reclaiming 45 GB after unpacking
        server.log.clear()
        report = D.download_release(dest, _opts(server, only="images"))
        assert server.gets() == []
    assert sorted(report.skipped) == sorted(ARCHIVES)


@pytest.mark.parametrize(
    ("member", "kind", "message"),
    [
        ("../evil.png", "file", "unsafe member '../evil.png'"),
        ("images/../../evil.png", "file", "unsafe member 'images/../../evil.png'"),
        ("/tmp/evil.png", "file", "unsafe member '/tmp/evil.png'"),
        ("images/link.png", "symlink", "unsafe member 'images/link.png'.*outside the destination"),
        ("images/link.png", "inside-link", "member 'images/link.png' is a link"),
    ],
)
def test_unsafe_archives_are_refused(
    files: dict[str, bytes], tmp_path: Path, member: str, kind: str, message: str
) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if kind.endswith("link"):
            info.type = tarfile.SYMTYPE
            info.linkname = "other.png" if kind == "inside-link" else "../../outside.png"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    evil = {**files, "images_001.tar.gz": raw.getvalue()}
    dest = tmp_path / "nih"
    with MirrorServer(evil) as server, pytest.raises(DownloadError, match=message):
        D.download_release(dest, _opts(server, only="images", jobs=1))
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "outside.png").exists()
    assert not _manifest(dest).get("images_001.tar.gz", {}).get("extracted")


def test_members_outside_images_are_skipped_with_a_note(files: dict[str, bytes], tmp_path: Path) -> None:
    odd = pack_archive({"images/a.png": b"png", "README.txt": b"hi", "images/sub/b.png": b"x"})
    dest = tmp_path / "nih"
    with MirrorServer({**files, "images_001.tar.gz": odd}) as server:
        report = D.download_release(dest, _opts(server, only="images"))
    assert (dest / "images" / "a.png").read_bytes() == b"png" and not (dest / "README.txt").exists()
    assert any("ignored 2 member(s) outside images/" in n for n in report.notes)


def test_offline_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"cannot reach 127\.0\.0\.1:{port} \(.*\); use --mirror URL or download "
                                            r"by hand from https://nihcc\.app\.box\.com/v/ChestXray-NIHCC"):
        D.download_release(tmp_path / "nih", D.DownloadOptions(mirror=f"http://127.0.0.1:{port}/"))


def test_http_errors_retry_or_fail_clearly(files: dict[str, bytes], tmp_path: Path) -> None:
    with MirrorServer(files, Knobs(status={"images_010.tar.gz": [503, 429]})) as server:
        D.download_release(tmp_path / "a", _opts(server, only="images"))
        assert [g.status for g in server.gets("images_010.tar.gz")] == [503, 429, 200]
    missing = {k: v for k, v in files.items() if k != "images_011.tar.gz"}
    with MirrorServer(missing) as server, pytest.raises(
        DownloadError, match=rf"images_011\.tar\.gz: {server.url}images_011\.tar\.gz answered HTTP 404"
    ):
        D.download_release(tmp_path / "b", _opts(server, only="images"))
    with MirrorServer(files, Knobs(status={"images_012.tar.gz": [503] * 9})) as server, pytest.raises(
        DownloadError, match=r"images_012\.tar\.gz: transfer from .* failed 3 times \(last: HTTP 503\); rerun"
    ):
        D.download_release(tmp_path / "c", _opts(server, only="images", retries=2))


def test_metadata_without_a_mirror_is_by_hand(files: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "nih"
    report = D.download_release(dest, D.DownloadOptions(only="metadata"))
    assert report.missing_metadata == list(release.METADATA_NAMES) and report.downloaded == []
    message = D.missing_metadata_message(report.missing_metadata, dest)
    assert release.RELEASE_PAGE in message and "by hand" in message
    for name in release.METADATA_NAMES:  # the user fetched them from the release page
        (dest / name).write_bytes(files[name])
    report = D.download_release(dest, D.DownloadOptions(only="metadata"))
    assert report.missing_metadata == [] and sorted(report.skipped) == sorted(release.METADATA_NAMES)
    assert _manifest(dest)["test_list.txt"]["source"] == "by hand"
    (dest / "Data_Entry_2017_v2020.csv").rename(dest / "Data_Entry_2017.csv")  # the 2017 file does as well
    assert D.download_release(dest, D.DownloadOptions(only="metadata")).missing_metadata == []


def test_official_split_lists_are_recognised(tmp_path: Path, nih_shared: Path) -> None:
    for name in (labels.TRAIN_VAL_LIST, labels.TEST_LIST):
        entry, note = D.metadata_entry(nih_shared / name, source="shared")
        assert entry["matches_release"] is True and note is None


def test_kaggle_copy_is_linked_and_loads(tmp_path: Path) -> None:
    from cxrmtl.phantom.generate import write_phantom

    kaggle = tmp_path / "kaggle"
    write_phantom(kaggle, patients=6, size=32, seed=1)  # the Kaggle layout: images_0NN/images + CSVs
    report = D.adopt_kaggle(kaggle, tmp_path / "nih")
    assert report.linked and report.rows == report.found > 0 and not report.verified_only
    assert {"Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"} <= set(report.copied)
    assert (tmp_path / "nih" / report.linked[0]).is_symlink()
    again = D.adopt_kaggle(kaggle, tmp_path / "nih")
    assert again.linked == [] and again.copied == [] and again.found == report.found
    in_place = D.adopt_kaggle(kaggle, kaggle)
    assert in_place.verified_only and in_place.found == report.found and not (kaggle / D.MANIFEST_NAME).exists()
    with pytest.raises(DownloadError, match="no images_001/images"):
        D.adopt_kaggle(tmp_path, tmp_path / "y")
    with pytest.raises(DownloadError, match="--kaggle folder not found"):
        D.adopt_kaggle(tmp_path / "absent", tmp_path / "y")
