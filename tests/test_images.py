"""The image store and its busybox base image, checked on disk and by umoci and skopeo."""
from __future__ import annotations

import re
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from sandbox.archive import LayerEntry, UnsafeArchiveError, extract_layer, write_layer_tar
from sandbox.images import REF_NAME, ImageError, ImageStore, chain_ids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers are unpacked as root (0:0 owners)")


@pytest.fixture
def tmp():
    """A scratch directory removed after the test (pytest's tmp_path keeps old ones)."""
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def store():
    with tempfile.TemporaryDirectory(prefix="glassbox-test-") as d:
        s = ImageStore(Path(d) / "state")
        s.ensure_base_images()
        yield s


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# --- the store --------------------------------------------------------------------------------

def test_base_images_are_reproducible_and_not_rewritten(tmp):
    first = ImageStore(tmp / "a")
    first.ensure_base_images()
    index = tmp / "a" / "oci" / "index.json"
    before = index.stat()
    ids = {i.name: i.id for i in first.list()}
    assert set(ids) == {"busybox:latest", "scratch:latest"}

    ImageStore(tmp / "a").ensure_base_images()  # a second process, in effect
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    again = ImageStore(tmp / "b")
    again.ensure_base_images()
    assert {i.name: i.id for i in again.list()} == ids
    assert index.read_bytes() == (tmp / "b" / "oci" / "index.json").read_bytes()


def test_concurrent_first_use_builds_each_image_once(tmp):
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ImageStore(tmp / "state").ensure_base_images()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0] * 4
    index = json.loads((tmp / "state" / "oci" / "index.json").read_text())
    assert sorted(m["annotations"][REF_NAME] for m in index["manifests"]) == \
        ["busybox:latest", "scratch:latest"]
    leftovers = [p for p in (tmp / "state").rglob(".tmp*")] + \
                [p for p in (tmp / "state" / "layers").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_layer_blob_digest_is_the_configs_diff_id(store):
    image = store.get("busybox")
    [diff_id] = image.config["rootfs"]["diff_ids"]
    blob = store.blob_path(diff_id)
    assert _sha256(blob) == diff_id
    manifest_desc = next(m for m in json.loads((store.oci / "index.json").read_text())["manifests"]
                         if m["annotations"][REF_NAME] == "busybox:latest")
    manifest = json.loads(store.blob_path(manifest_desc["digest"]).read_bytes())
    assert _sha256(store.blob_path(manifest_desc["digest"])) == manifest_desc["digest"]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["layers"] == [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": diff_id, "size": blob.stat().st_size}]
    assert manifest["config"]["digest"] == image.id == _sha256(store.blob_path(image.id))
    assert image.layers == [store.layers_dir / chain_ids([diff_id])[0].removeprefix("sha256:")]


def test_busybox_config_says_what_and_when(store):
    config = store.get("busybox:latest").config
    assert config["os"] == "linux" and config["architecture"] in ("amd64", "arm64")
    assert config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"]}
    [history] = config["history"]
    assert re.match(r"glassbox: busybox v\d+\.\d+\.\d+ .*, static$", history["created_by"])
    assert history["created"] == config["created"]
    assert config["created"].endswith("Z")


def test_busybox_layer_has_applets_as_hard_links_and_a_minimal_etc(store):
    [layer] = store.get("busybox").layers
    busybox = (layer / "bin" / "busybox").stat()
    assert stat.S_IMODE(busybox.st_mode) == 0o755
    assert (layer / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert (layer / "bin" / "sh").stat().st_ino == busybox.st_ino
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        assert (layer / applet).lstat().st_ino == busybox.st_ino, applet
    assert busybox.st_nlink == len(set(applets))
    assert (layer / "etc" / "passwd").read_text() == (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    assert (layer / "etc" / "group").read_text() == "root:x:0:\nnobody:x:65534:\n"
    assert stat.S_IMODE((layer / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((layer / "root").stat().st_mode) == 0o700
    for path in [layer, *layer.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path


def test_scratch_has_no_layers(store):
    scratch = store.get("scratch")
    assert scratch.layers == []
    assert scratch.config["rootfs"] == {"type": "layers", "diff_ids": []}
    assert "Cmd" not in scratch.config["config"]


def test_umoci_unpacks_busybox(store, tmp):
    result = subprocess.run(["umoci", "unpack", "--image", f"{store.oci}:busybox:latest",
                             str(tmp / "bundle")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rootfs = tmp / "bundle" / "rootfs"
    assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert (rootfs / "bin" / "sh").stat().st_ino == (rootfs / "bin" / "busybox").stat().st_ino


def test_skopeo_reads_the_layout(store):
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{store.oci}:busybox:latest"],
                         capture_output=True, text=True)
    assert raw.returncode == 0, raw.stderr
    image = store.get("busybox")
    assert json.loads(raw.stdout)["config"]["digest"] == image.id
    info = subprocess.run(["skopeo", "inspect", f"oci:{store.oci}:busybox:latest"],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["Layers"] == image.config["rootfs"]["diff_ids"]


def test_get_by_name_id_and_id_prefix(store):
    busybox = store.get("busybox")
    assert busybox.name == "busybox:latest"
    assert store.get("busybox:latest").id == busybox.id
    assert store.get(busybox.id).name == "busybox:latest"
    hexid = busybox.id.removeprefix("sha256:")
    assert store.get(hexid[:12]).id == busybox.id
    assert store.get("sha256:" + hexid[:8]).id == busybox.id
    assert [i.name for i in store.list()] == ["busybox:latest", "scratch:latest"]


def test_unknown_image_error_names_it_and_lists_what_exists(store):
    with pytest.raises(ImageError, match=r"image 'nope' not found \(images here: busybox:latest, scratch:latest\)"):
        store.get("nope")
    with pytest.raises(LookupError):
        store.get("sha256:" + "0" * 64)


def test_removed_layer_dir_is_unpacked_again(tmp):
    s = ImageStore(tmp / "state")
    s.ensure_base_images()
    [layer] = s.get("busybox").layers
    shutil.rmtree(layer)
    assert s.get("busybox").layers == [layer] and (layer / "bin" / "busybox").is_file()


# --- writing layers ---------------------------------------------------------------------------

def test_layer_tar_is_deterministic_and_links_follow_their_target():
    entries = [LayerEntry.dir("bin"), LayerEntry.file("bin/tool", b"#!x\n", 0o4755),
               LayerEntry.hardlink("bin/a", "bin/tool"), LayerEntry.symlink("bin/b", "/bin/tool")]
    one, two = io.BytesIO(), io.BytesIO()
    digest = write_layer_tar(entries, one, mtime=1_700_000_000)
    assert write_layer_tar(list(reversed(entries)), two, mtime=1_700_000_000) == digest
    assert one.getvalue() == two.getvalue()
    assert hashlib.sha256(one.getvalue()).hexdigest() == digest
    with tarfile.open(fileobj=io.BytesIO(one.getvalue())) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["bin", "bin/b", "bin/tool", "bin/a"]
    assert all((m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1_700_000_000)
               for m in members)
    assert members[2].mode == 0o4755 and members[3].islnk() and members[3].linkname == "bin/tool"


# --- unpacking layers safely ------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def test_extract_layer_restores_files_links_modes_and_owners(tmp):
    info_suid = _info("usr/bin/tool", mode=0o4755)
    info_suid.uid, info_suid.gid, info_suid.mtime = 0, 0, 1_600_000_000
    owned = _info("home/alice/notes")
    owned.uid, owned.gid = 1000, 1000
    blob = _tar(tmp / "layer.tar", [
        (_info("./", tarfile.DIRTYPE, mode=0o755), None),
        (info_suid, b"tool"),  # its parent directories are not in the tar
        (owned, b"hi"),
        (_info("bin", tarfile.DIRTYPE, mode=0o755), None),
        (_info("bin/tool", tarfile.LNKTYPE, linkname="usr/bin/tool"), None),
        (_info("bin/abs", tarfile.SYMTYPE, linkname="/usr/bin/tool"), None),
        (_info("bin/rel", tarfile.SYMTYPE, linkname="../usr/bin/tool"), None),
        (_info("home/alice/notes"), b"replaced"),  # a later entry wins
    ])
    dest = tmp / "layer"
    extract_layer(blob, dest)
    tool = (dest / "usr" / "bin" / "tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and int(tool.st_mtime) == 1_600_000_000
    assert (dest / "bin" / "tool").stat().st_ino == tool.st_ino
    assert os.readlink(dest / "bin" / "abs") == "/usr/bin/tool"
    assert os.readlink(dest / "bin" / "rel") == "../usr/bin/tool"
    notes = (dest / "home" / "alice" / "notes")
    assert notes.read_bytes() == b"replaced"
    assert (notes.stat().st_uid, notes.stat().st_gid) == (0, 0)  # the later entry's owner
    assert stat.S_IMODE((dest / "usr").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp.iterdir()) == ["layer", "layer.tar"]


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_out_then_write",
                                  "write_through_inner_symlink", "write_through_abs_symlink",
                                  "hardlink_out", "char_device", "fifo"])
def test_extract_layer_refuses_unsafe_entries_and_leaves_nothing(tmp, case):
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    abs_name = f"{tmp}/abs-file"
    members = {
        "dotdot": [(_info("../evil"), b"x")],
        "absolute": [(_info(abs_name), b"x")],
        "symlink_out_then_write": [(_info("x", tarfile.SYMTYPE, linkname="../../etc"), None),
                                   (_info("x/passwd"), b"x")],
        "write_through_inner_symlink": [(_info("etc", tarfile.DIRTYPE, mode=0o755), None),
                                        (_info("x", tarfile.SYMTYPE, linkname="etc"), None),
                                        (_info("x/passwd"), b"x")],
        "write_through_abs_symlink": [(_info("x", tarfile.SYMTYPE, linkname=str(outside)), None),
                                      (_info("x/secret"), b"overwritten")],
        "hardlink_out": [(_info("h", tarfile.LNKTYPE, linkname="../outside/secret"), None)],
        "char_device": [(_info("dev/null", tarfile.CHRTYPE), None)],
        "fifo": [(_info("pipe", tarfile.FIFOTYPE), None)],
    }[case]
    work = tmp / "work"
    work.mkdir()
    blob = _tar(tmp / "layer.tar", members)
    with pytest.raises(UnsafeArchiveError) as caught:
        extract_layer(blob, work / "layer")
    entry = members[-1][0].name if case != "symlink_out_then_write" else "x"
    assert repr(entry) in str(caught.value)
    assert list(work.iterdir()) == []  # no layer, no temporary directory
    assert sorted(p.name for p in tmp.iterdir()) == ["layer.tar", "outside", "work"]
    assert [p.name for p in outside.iterdir()] == ["secret"]
    assert (outside / "secret").read_text() == "keep"
