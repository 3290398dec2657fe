"""fgnb.data.download_cub end to end, offline: a server on 127.0.0.1 serves a small
CUB-layout archive (good checksum, bad checksum, interrupted transfer, unsafe member)."""
import io
import tarfile

import pytest

import fgnb.data
from cub_server import Server, cub_archive, md5
from fgnb.cli import main as cli
from fgnb.config import ConfigError, TrainConfig
from fgnb.data import CUBDataset, DownloadError, download_cub


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return cub_archive(tmp_path_factory.mktemp("cub_src"))


@pytest.fixture
def server(archive):
    with Server() as s:
        s.files["/CUB_200_2011.tgz"] = archive
        yield s


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


def test_download_verifies_extracts_and_is_reused(tmp_path, server, archive):
    root = tmp_path / "data" / "CUB_200_2011"
    got = download_cub(root, url=server.url + "/CUB_200_2011.tgz", md5=md5(archive), progress=False)
    assert got == root and (root / "images.txt").is_file()
    assert len(CUBDataset(root, "train", val_fraction=0.0)) == 12 and len(CUBDataset(root, "test")) == 6
    assert (root.parent / "CUB_200_2011.tgz").read_bytes() == archive  # kept: a re-extraction needs no download
    assert leftovers(root.parent) == [] and not (root.parent / "attributes.txt").exists()
    n = len(server.requests)
    assert download_cub(root, url=server.url + "/CUB_200_2011.tgz", md5=md5(archive), progress=False) == root
    assert len(server.requests) == n  # there already: no request


def test_data_root_with_another_name(tmp_path, server, archive):
    root = tmp_path / "birds"
    download_cub(root, url=server.url + "/CUB_200_2011.tgz", md5=md5(archive), progress=False)
    assert (root / "images.txt").is_file() and not (tmp_path / "CUB_200_2011").exists()


def test_bad_checksum_removes_the_download(tmp_path, server):
    root = tmp_path / "CUB_200_2011"
    with pytest.raises(DownloadError, match=r"MD5 is [0-9a-f]{32}, not the archive's 0{32}.*removed"):
        download_cub(root, url=server.url + "/CUB_200_2011.tgz", md5="0" * 32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no archive, no partial file, no folder


def test_interrupted_transfer_resumes(tmp_path, server, archive):
    root = tmp_path / "CUB_200_2011"
    url, cut = server.url + "/CUB_200_2011.tgz", len(archive) // 3
    server.cut["/CUB_200_2011.tgz"] = cut
    with pytest.raises(DownloadError, match=rf"stopped at {cut} of {len(archive)} bytes.*kept: run again to resume"):
        download_cub(root, url=url, md5=md5(archive), progress=False)
    part = tmp_path / "CUB_200_2011.tgz.part"
    assert part.read_bytes() == archive[:cut] and not root.exists()
    download_cub(root, url=url, md5=md5(archive), progress=False)
    assert server.requests[-1] == ("/CUB_200_2011.tgz", f"bytes={cut}-")  # only the rest was fetched
    assert (root / "images.txt").is_file() and not part.exists()


def test_damaged_archive_is_continued_then_removed(tmp_path, server, archive):
    # a complete-size file with the wrong bytes: the server has nothing more (416), the MD5 fails
    (tmp_path / "CUB_200_2011.tgz").write_bytes(b"x" * len(archive))
    with pytest.raises(DownloadError, match="MD5"):
        download_cub(tmp_path / "CUB_200_2011", url=server.url + "/CUB_200_2011.tgz", md5=md5(archive), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unsafe_member_is_refused(tmp_path, server):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("CUB_200_2011/images.txt", "../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    server.files["/bad.tgz"] = buf.getvalue()
    work = tmp_path / "work"
    with pytest.raises(DownloadError, match="unsafe member"):
        download_cub(work / "CUB_200_2011", url=server.url + "/bad.tgz", md5=md5(buf.getvalue()), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (work / "CUB_200_2011").exists()
    assert leftovers(work) == []


def test_errors_name_the_problem(tmp_path, server, archive):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="holds no images.txt"):
        download_cub(tmp_path / "full", url=server.url + "/CUB_200_2011.tgz", md5=md5(archive), progress=False)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_cub(tmp_path / "x" / "CUB_200_2011", url=server.url + "/missing.tgz", md5=md5(archive), progress=False)
    with pytest.raises(ConfigError, match="download=True fetches cub.*'synthetic'"):
        TrainConfig(download=True)


def test_cli_train_downloads(tmp_path, server, archive, monkeypatch, capsys):
    monkeypatch.setattr(fgnb.data, "CUB_URL", server.url + "/CUB_200_2011.tgz")
    monkeypatch.setattr(fgnb.data, "CUB_MD5", md5(archive))
    root = tmp_path / "CUB_200_2011"
    args = ["train", "--dataset", "cub", "--download", "true", "--data-root", str(root), "--model",
            "vit_tiny_patch16_224", "--weights", "none", "--embed-dim", "24", "--num-heads", "2", "--depth", "3",
            "--img-size", "16", "--patch-size", "8", "--batch-size", "4", "--epochs", "1", "--val-fraction", "0",
            "--progress", "false", "--out", str(tmp_path / "run")]
    assert cli(args) == 0
    assert (root / "images.txt").is_file() and (tmp_path / "run" / "test_metrics.json").is_file()
    assert '"n": 6' in capsys.readouterr().out
