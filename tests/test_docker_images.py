"""The real docker CLI and docker-py drive the glass daemon: builds, images, volumes, disk
usage, and push and pull through the classroom registry.

One `glassbox daemon` serves the whole module on a temporary state dir; every command
goes through the docker CLI binary (with DOCKER_BUILDKIT=0, the classic POST /build path)
or docker-py 7, and each test checks what the command said and what state it left.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

docker_py = pytest.importorskip("docker")

from tests.docker_harness import DOCKER, running_daemon  # noqa: E402
from tests.test_registry import USERS, serving  # noqa: E402

pytestmark = [
    pytest.mark.skipif(DOCKER is None, reason="no docker CLI (./test installs one)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs containers: needs root"),
]

DOCKERFILE = """\
FROM busybox AS base
ARG A=default
RUN echo "arg is $A" > /a.txt
COPY hello.txt /hello.txt
CMD ["cat", "/a.txt"]

FROM base AS final
RUN echo final > /final
"""


# ---------------------------------------------------------------------- the daemon

def image_ids(daemon) -> dict[str, str]:
    """REPOSITORY:TAG -> full image id, from `docker images`."""
    rows = daemon.ok("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").split("\n")
    return dict(row.split() for row in rows if row)


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("glassbox-test-docker-images-") as daemon:
        yield daemon


@pytest.fixture
def docker(daemon):
    """The daemon, with every container a test made removed after it."""
    yield daemon
    daemon.remove_containers()


@pytest.fixture(scope="module")
def context(daemon) -> Path:
    path = daemon.top / "ctx"
    path.mkdir()
    (path / "F").write_text(DOCKERFILE)
    (path / "hello.txt").write_text("hi\n")
    return path


@pytest.fixture(scope="module")
def built(daemon, context) -> None:
    """app:v1, built once through the CLI: busybox + the RUN layer + the COPY layer."""
    daemon.ok("build", "-t", "app:v1", "-f", context / "F", "--build-arg", "A=b", "--target", "base",
              "--no-cache", context)


@pytest.fixture
def app(daemon, built) -> str:
    """app:v1's id as it is now: a test that builds it again with --no-cache makes a new
    image (its config has a new creation time once a second has passed), which later
    cached builds give back."""
    return image_ids(daemon)["app:v1"]


@pytest.fixture(scope="module")
def registry(daemon):
    (daemon.top / "open").mkdir()
    with serving(daemon.top / "open") as registry:
        yield registry


def build_solo(docker, name: str, marker: str) -> str:
    """An image with a layer of its own and only one tag (so rmi really deletes it)."""
    ctx = docker.top / f"ctx-{name}"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN echo {marker} > /marker\n")
    docker.ok("build", "-q", "-t", name, ctx)
    return image_ids(docker)[f"{name}:latest"]


# ---------------------------------------------------------------------- build

def test_build_streams_steps_tags_the_image_and_uses_the_cache(docker, context, app):
    out = docker.ok("build", "-t", "app:v1", "-f", context / "F", "--build-arg", "A=b", "--target", "base",
                    "--no-cache", context)
    assert "Step 1/5 : FROM busybox AS base" in out and "Step 5/5 : CMD" in out  # --target: 5 of 7
    assert " ---> Running in " in out and " ---> Using cache" not in out
    assert "Successfully built " in out and "Successfully tagged app:v1" in out
    built_id = out.split("Successfully built ")[1].split()[0]
    assert image_ids(docker)["app:v1"].removeprefix("sha256:").startswith(built_id)

    again = docker.ok("build", "-t", "app:v1", "-f", context / "F", "--build-arg", "A=b", "--target", "base",
                      context)
    assert again.count(" ---> Using cache") == 4  # every step after FROM
    assert f"Successfully built {built_id}" in again

    assert docker.ok("run", "--rm", "app:v1") == "arg is b\n"
    assert "app:v1" in docker.ok("images", "--format", "{{.Repository}}:{{.Tag}}").split()


def test_build_quiet_prints_only_the_image_id(docker, context, app):
    out = docker.ok("build", "-q", "-t", "app:v1", "-f", context / "F", "--build-arg", "A=b", "--target",
                    "base", context)
    assert out.strip() == app


def test_build_with_a_dockerfile_outside_the_context(docker, context):
    # The CLI appends such a Dockerfile to the context tar as .dockerfile.<random>, and
    # ends the tar without its final padding and zero blocks.
    outside = docker.top / "outside"
    outside.mkdir()
    (outside / "Dockerfile.dev").write_text("FROM busybox\nCOPY hello.txt /copied.txt\n")
    out = docker.ok("build", "-t", "outside", "-f", outside / "Dockerfile.dev", context)
    assert "Step 2/2 : COPY hello.txt /copied.txt" in out
    assert docker.ok("run", "--rm", "outside", "cat", "/copied.txt") == "hi\n"


def test_build_of_the_last_stage_with_docker_py_and_a_gzip_context(docker, context):
    client = docker.client
    image, logs = client.images.build(path=str(context), dockerfile="F", tag="pyapp:latest",
                                      buildargs={"A": "py"}, gzip=True, rm=True)
    logs = list(logs)
    text = "".join(chunk.get("stream", "") for chunk in logs)
    assert "Step 7/7 : RUN echo final > /final" in text
    assert {"aux": {"ID": image.id}} in logs
    assert image.tags == ["pyapp:latest"]
    assert client.containers.run("pyapp", ["cat", "/a.txt", "/final"], remove=True) == b"arg is py\nfinal\n"


def test_a_failing_build_step_is_an_error_and_the_daemon_keeps_serving(docker):
    ctx = docker.top / "ctx-failing"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo about to fail; exit 3\n")
    result = docker.docker("build", "-t", "broken", ctx)
    assert result.returncode == 1
    assert "about to fail" in result.stdout
    assert "returned a non-zero code: 3" in result.stderr
    assert "broken:latest" not in image_ids(docker)
    with pytest.raises(docker_py.errors.BuildError, match="non-zero code: 3"):
        docker.client.images.build(path=str(ctx), tag="broken")

    (ctx / "Dockerfile").write_text("FROM nosuchbase\n")
    assert "nosuchbase" in docker.fails("build", ctx)
    docker.ok("version")


# ---------------------------------------------------------------------- images

def test_inspect_shows_config_layers_and_tags(docker, app):
    [inspect] = json.loads(docker.ok("image", "inspect", "app:v1"))
    assert inspect["Id"] == app and inspect["RepoTags"] == ["app:v1"]
    assert inspect["Config"]["Cmd"] == ["cat", "/a.txt"]
    assert inspect["Os"] == "linux" and inspect["Architecture"]
    assert inspect["RootFS"]["Type"] == "layers" and len(inspect["RootFS"]["Layers"]) == 3
    [busybox] = json.loads(docker.ok("image", "inspect", "busybox"))
    assert inspect["RootFS"]["Layers"][0] == busybox["RootFS"]["Layers"][0]
    assert inspect["Size"] == busybox["Size"] + len("arg is b\n") + len("hi\n")
    assert docker.ok("inspect", "-f", "{{.Id}}", "app:v1").strip() == app  # docker inspect finds images too
    assert "No such image: nosuch:v9" in docker.fails("image", "inspect", "nosuch:v9")

    image = docker.client.images.get("app:v1")
    assert image.id == app and image.attrs["RootFS"]["Layers"] == inspect["RootFS"]["Layers"]
    with pytest.raises(docker_py.errors.ImageNotFound):
        docker.client.images.get("nosuch:v9")


def test_history_lists_each_step_newest_first_with_its_layer_size(docker, app):
    rows = [json.loads(line) for line in
            docker.ok("history", "--no-trunc", "--format", "{{json .}}", "app:v1").splitlines()]
    assert [r["ID"] for r in rows] == [app] + ["<missing>"] * (len(rows) - 1)
    assert rows[0]["CreatedBy"] == 'CMD ["cat", "/a.txt"]'
    by_step = {r["CreatedBy"].split()[0]: r for r in rows}
    assert "ARG" in by_step and "COPY" in by_step
    history = docker.client.images.get("app:v1").history()
    sizes = [(h["CreatedBy"].split()[0], h["Size"]) for h in history]
    assert sizes[:4] == [("CMD", 0), ("COPY", len("hi\n")), ("/bin/sh", len("arg is b\n")), ("ARG", 0)]
    assert history[0]["Id"] == app and history[0]["Tags"] == ["app:v1"]
    assert history[-1]["Size"] > 1_000_000  # busybox's layer


def test_untagging_reports_only_the_name_not_layers_collected_from_elsewhere(docker):
    """A --no-cache rebuild a second later makes a new image and leaves the old one's
    layers unused; an untag afterwards deletes no image, so it reports no layer."""
    import time
    ctx = docker.top / "ctx-untag"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo once > /once\n")
    docker.ok("build", "-q", "-t", "untag:v1", ctx)
    time.sleep(1.1)   # a config made in another second: another image
    docker.ok("build", "-q", "--no-cache", "-t", "untag:v1", ctx)
    docker.ok("tag", "untag:v1", "untag:v2")
    assert docker.ok("rmi", "untag:v2") == "Untagged: untag:v2\n"
    removed = docker.ok("rmi", "untag:v1").splitlines()
    assert removed[0] == "Untagged: untag:v1" and removed[1].startswith("Deleted: sha256:")


def test_tag_gives_an_image_another_name(docker, app):
    docker.ok("tag", "app:v1", "me/app:v2")
    ids = image_ids(docker)
    assert ids["me/app:v2"] == ids["app:v1"] == app
    assert docker.ok("images", "me/app", "--format", "{{.Repository}}:{{.Tag}}") == "me/app:v2\n"
    assert docker.client.images.get("app:v1").tag("pyrepo/app", "t1") is True
    assert docker.client.images.get("pyrepo/app:t1").id == app
    assert sorted(docker.client.images.get(app).tags) == ["app:v1", "me/app:v2", "pyrepo/app:t1"]
    assert [i.id for i in docker.client.images.list(name="pyrepo/app")] == [app]
    # Untagging one name of several removes only the name.
    assert docker.ok("rmi", "me/app:v2") == "Untagged: me/app:v2\n"
    docker.client.images.remove("pyrepo/app:t1")
    assert image_ids(docker)["app:v1"] == app


def test_rmi_refuses_an_image_a_container_uses_then_deletes_it(docker):
    solo = build_solo(docker, "solo", "alone")
    docker.ok("create", "--name", "solo-user", "solo")
    refusal = docker.fails("rmi", "solo")
    assert "conflict" in refusal and "solo-user" in refusal
    with pytest.raises(docker_py.errors.APIError) as refused:
        docker.client.images.remove("solo")
    assert refused.value.status_code == 409
    assert image_ids(docker)["solo:latest"] == solo

    docker.ok("rm", "solo-user")
    out = docker.ok("rmi", "solo").splitlines()
    # (its own layer stays: the build cache still refers to it)
    assert out == ["Untagged: solo:latest", f"Deleted: {solo}"]
    assert "solo:latest" not in image_ids(docker)
    assert "No such image: solo" in docker.fails("rmi", "solo")


def test_dangling_images_are_listed_and_pruned(docker):
    ctx = docker.top / "ctx-dangling"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo nameless > /n\n")
    image_id = docker.ok("build", "-q", ctx).strip()
    dangling = docker.ok("images", "--filter", "dangling=true", "--no-trunc", "--format",
                         "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert f"<none>:<none> {image_id}" in dangling
    assert image_id in [i.id for i in docker.client.images.list(filters={"dangling": True})]
    out = docker.ok("image", "prune", "-f")
    assert f"deleted: {image_id}" in out and "Total reclaimed space:" in out
    assert image_id not in docker.ok("images", "-a", "--no-trunc", "-q")
    assert "busybox:latest" in image_ids(docker)


# ---------------------------------------------------------------------- commit

def test_commit_keeps_the_container_changes_with_message_author_and_change(docker):
    docker.ok("create", "--name", "src", "busybox", "sh", "-c", "echo committed > /data.txt")
    docker.ok("start", "src")
    assert docker.ok("wait", "src").strip() == "0"
    image_id = docker.ok("commit", "-m", "saved data", "-a", "Ann <ann@example.org>",
                         "-c", 'CMD ["cat", "/data.txt"]', "src", "snap:v1").strip()
    assert image_id.startswith("sha256:") and image_ids(docker)["snap:v1"] == image_id
    [inspect] = json.loads(docker.ok("image", "inspect", "snap:v1"))
    assert inspect["Comment"] == "saved data" and inspect["Author"] == "Ann <ann@example.org>"
    assert inspect["Config"]["Cmd"] == ["cat", "/data.txt"]
    top = json.loads(docker.ok("history", "--format", "{{json .}}", "snap:v1").splitlines()[0])
    assert top["Comment"] == "saved data" and top["Size"] != "0B"
    assert docker.ok("run", "--rm", "snap:v1") == "committed\n"

    container = docker.client.containers.get("src")
    image = container.commit("pysnap", "t1", message="from python", author="Bo",
                             changes=["ENV WHO=py", "WORKDIR /tmp"])
    assert image.tags == ["pysnap:t1"]
    assert "WHO=py" in image.attrs["Config"]["Env"] and image.attrs["Config"]["WorkingDir"] == "/tmp"
    assert docker.client.containers.run("pysnap:t1", ["sh", "-c", "echo $WHO $(pwd); cat /data.txt"],
                                        remove=True) == b"py /tmp\ncommitted\n"
    # A config in the body (docker-py's conf=): its Env joins the container's, as with dockerd.
    image = container.commit("pyconf", "t1", conf={"Cmd": ["cat", "/data.txt"], "Env": ["A=1"]})
    env = image.attrs["Config"]["Env"]
    assert "A=1" in env and any(e.startswith("PATH=") for e in env)
    assert image.attrs["Config"]["Cmd"] == ["cat", "/data.txt"]

    assert "no such container" in docker.fails("commit", "nosuchcontainer", "x").lower()
    assert "CMD" in docker.fails("commit", "-c", "FROM busybox", "src", "bad")  # not a commit change


# ---------------------------------------------------------------------- save and load

def test_save_then_load_brings_back_the_same_image(docker):
    saved_id = build_solo(docker, "saved", "keep me")
    archive = docker.top / "saved.tar"
    docker.ok("save", "-o", archive, "saved")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["saved:latest"]
        assert "index.json" in tar.getnames() and "oci-layout" in tar.getnames()
    docker.ok("rmi", "saved")
    assert "saved:latest" not in image_ids(docker)

    assert docker.ok("load", "-i", archive) == "Loaded image: saved:latest\n"
    assert image_ids(docker)["saved:latest"] == saved_id
    assert docker.ok("run", "--rm", "saved", "cat", "/marker") == "keep me\n"

    # docker-py: GET /images/{name}/get, and POST /images/load.
    data = b"".join(docker.client.images.get("saved").save())
    docker.client.images.remove("saved")
    [loaded] = docker.client.images.load(data)
    assert loaded.id == saved_id and loaded.tags == ["saved:latest"]

    assert "nosuch" in docker.fails("save", "-o", docker.top / "none.tar", "nosuch:v1")


# ---------------------------------------------------------------------- volumes

def test_volume_create_ls_inspect_and_rm_refused_while_used(docker):
    assert docker.ok("volume", "create", "--label", "course=docker", "vol1") == "vol1\n"
    assert "vol1" in docker.ok("volume", "ls", "--format", "{{.Name}}").split()
    [inspect] = json.loads(docker.ok("volume", "inspect", "vol1"))
    assert inspect["Name"] == "vol1" and inspect["Driver"] == "local"
    assert inspect["Labels"] == {"course": "docker"} and inspect["Mountpoint"].endswith("/vol1/_data")
    assert docker.ok("volume", "ls", "-q", "--filter", "label=course=docker").split() == ["vol1"]

    docker.ok("run", "--name", "holder", "-v", "vol1:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    refusal = docker.fails("volume", "rm", "vol1")
    assert "in use" in refusal and "holder" in refusal
    docker.ok("rm", "holder")
    assert docker.ok("run", "--rm", "-v", "vol1:/data", "busybox", "cat", "/data/f") == "kept\n"
    assert docker.ok("volume", "rm", "vol1") == "vol1\n"
    assert "vol1" not in docker.ok("volume", "ls", "-q").split()
    assert "no such volume" in docker.fails("volume", "inspect", "vol1").lower()
    assert "not available" in docker.fails("volume", "create", "-d", "nfs", "vol2")

    unnamed = docker.ok("volume", "create").strip()
    assert len(unnamed) == 64
    docker.ok("volume", "prune", "-f")  # only anonymous volumes (made for a container's VOLUME)
    assert unnamed in docker.ok("volume", "ls", "-q").split()
    docker.ok("volume", "rm", unnamed)
    assert docker.docker("volume", "rm", "-f", unnamed).returncode == 0  # -f: gone is fine

    client = docker.client
    volume = client.volumes.create("pyvol", labels={"by": "py"})
    assert volume.attrs["Labels"] == {"by": "py"}
    assert "pyvol" in [v.name for v in client.volumes.list()]
    assert client.volumes.get("pyvol").attrs["Driver"] == "local"
    volume.remove()
    with pytest.raises(docker_py.errors.NotFound):
        client.volumes.get("pyvol")


# ---------------------------------------------------------------------- disk usage

def test_system_df_counts_images_containers_and_volumes(docker, app):
    docker.ok("run", "--name", "dfc", "-v", "dfvol:/d", "busybox", "sh", "-c",
              "head -c 5000 /dev/zero > /d/f; head -c 3000 /dev/zero > /w")
    lines = docker.ok("system", "df", "--format", "{{json .}}").splitlines()
    rows = {row["Type"]: row for row in map(json.loads, lines)}
    assert set(rows) >= {"Images", "Containers", "Local Volumes", "Build Cache"}
    assert int(rows["Containers"]["TotalCount"]) >= 1 and int(rows["Images"]["Active"]) >= 1
    verbose = docker.ok("system", "df", "-v")
    assert "Images space usage" in verbose
    [dfc_row] = [line for line in verbose.splitlines() if line.endswith(" dfc")]
    assert " 1 " in dfc_row  # LOCAL VOLUMES: the CLI counts the container's Mounts

    df = docker.client.df()
    [container] = [c for c in df["Containers"] if c["Names"] == ["/dfc"]]
    assert container["SizeRw"] >= 3000
    [volume] = [v for v in df["Volumes"] if v["Name"] == "dfvol"]
    assert volume["UsageData"] == {"Size": 5000, "RefCount": 1}
    images = {i["Id"]: i for i in df["Images"]}
    busybox_id = image_ids(docker)["busybox:latest"]
    assert images[busybox_id]["Containers"] >= 1
    assert images[app]["SharedSize"] == images[busybox_id]["Size"]  # they share busybox's layer
    assert df["LayersSize"] >= images[app]["Size"]
    docker.ok("rm", "dfc")
    docker.ok("volume", "rm", "dfvol")


# ---------------------------------------------------------------------- pull and push

def test_push_and_pull_through_the_classroom_registry(docker, app, registry):
    target = f"{registry.host}/me/app:v1"
    docker.ok("tag", "app:v1", target)
    layers = [d.removeprefix("sha256:")[:12] for d in docker.client.images.get(app).attrs["RootFS"]["Layers"]]
    out = docker.ok("push", target)
    assert f"The push refers to repository [{registry.host}/me/app]" in out
    assert all(f"{layer}: Pushed" in out for layer in layers) and "v1: digest: sha256:" in out
    assert registry.request("GET", "/v2/me/app/manifests/v1").status == 200
    again = docker.ok("push", target)
    assert all(f"{layer}: Layer already exists" in again for layer in layers) and "Pushed" not in again

    docker.ok("rmi", target)
    out = docker.ok("pull", target)
    assert all(f"{layer}: Already exists" in out for layer in layers)  # app:v1 still has them
    assert out.rstrip().endswith(target)
    assert image_ids(docker)[target] == app

    # `docker run` of an image this host lacks pulls it through the registry first.
    docker.ok("tag", "app:v1", f"{registry.host}/me/other:v1")
    docker.ok("push", f"{registry.host}/me/other:v1")
    docker.ok("rmi", f"{registry.host}/me/other:v1")
    result = docker.docker("run", "--rm", f"{registry.host}/me/other:v1")
    assert result.returncode == 0 and result.stdout == "arg is b\n"
    assert "Unable to find image" in result.stderr

    assert "No such image" in docker.fails("push", f"{registry.host}/me/nothing:v1")


def test_docker_py_push_and_pull(docker, app, registry):
    client = docker.client
    repository = f"{registry.host}/py/app"
    assert client.images.get("app:v1").tag(repository, "t1")
    output = client.images.push(repository, tag="t1")
    aux = [json.loads(line)["aux"] for line in output.splitlines() if '"aux"' in line]
    assert aux and aux[0]["Tag"] == "t1" and aux[0]["Digest"].startswith("sha256:")
    client.images.remove(f"{repository}:t1")
    image = client.images.pull(repository, tag="t1")
    assert image.id == app and f"{repository}:t1" in image.tags
    with pytest.raises(docker_py.errors.NotFound):
        client.images.pull(repository, tag="missing")


def test_login_and_push_to_a_classroom_registry(docker, app):
    (docker.top / "classroom").mkdir()
    with serving(docker.top / "classroom", users=USERS) as classroom:
        wrong = docker.docker("login", classroom.host, "-u", "alice", "--password-stdin",
                              input="wrong-pw\n")
        assert wrong.returncode != 0 and "login" in wrong.stderr.lower()
        out = docker.ok("login", classroom.host, "-u", "alice", "--password-stdin", input="alice-pw\n")
        assert "Login Succeeded" in out
        target = f"{classroom.host}/c1/alice/app:v1"
        docker.ok("tag", "app:v1", target)
        assert "v1: digest: sha256:" in docker.ok("push", target)
        # Another student's path is refused by the registry, and the CLI says so.
        docker.ok("tag", "app:v1", f"{classroom.host}/c1/bob/app:v1")
        assert "alice may push only under c1/alice/" in docker.fails("push", f"{classroom.host}/c1/bob/app:v1")

        # docker-py with explicit credentials (X-Registry-Auth).
        output = docker.client.images.push(f"{classroom.host}/c1/bob/app", tag="v1",
                                           auth_config={"username": "bob", "password": "bob-pw"})
        assert '"aux"' in output
        docker.client.images.remove(f"{classroom.host}/c1/bob/app:v1")
        image = docker.client.images.pull(f"{classroom.host}/c1/bob/app", tag="v1",
                                          auth_config={"username": "alice", "password": "alice-pw"})
        assert image.id == app
        docker.ok("logout", classroom.host)


def test_pull_without_a_registry_says_none_is_reachable(docker):
    message = docker.fails("pull", "busybox")
    assert "no public registry" in message and "busybox:latest is already here" in message
    message = docker.fails("pull", "alpine:3.19")
    assert "no public registry" in message and "classroom registry" in message
    result = docker.docker("run", "--rm", "nosuchimage")
    assert result.returncode == 125
    assert "Unable to find image 'nosuchimage:latest' locally" in result.stderr
    assert "no public registry" in result.stderr
    with pytest.raises(docker_py.errors.NotFound, match="no public registry"):
        docker.client.images.pull("alpine", tag="3.19")
    assert "no public registry" in docker.fails("push", "busybox")


# ---------------------------------------------------------------------- bad input

def test_bad_input_is_a_4xx_and_the_daemon_keeps_serving(docker):
    def error(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, data = docker.request(method, path, body, headers)
        return status, json.loads(data)["message"]

    status, message = error("POST", "/v1.44/build?t=bad", b"this is not a tar at all",
                            {"Content-Type": "application/x-tar"})
    assert status == 400 and "invalid build context" in message

    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w") as tar:
        for name, data in (("../evil", b"x"), ("Dockerfile", b"FROM busybox\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    status, message = error("POST", "/build", escaping.getvalue())
    assert status == 400 and "../evil" in message
    status, message = error("POST", "/build", gzip.compress(b"\0" * 10) + b"trailing junk")
    assert status == 400 and "invalid build context" in message

    status, message = error("POST", "/build?buildargs=%7Bnot-json", b"")
    assert status == 400 and "buildargs" in message
    status, message = error("POST", "/build?t=Not%20A%20Name", b"")
    assert status == 400 and "invalid image name" in message
    status, message = error("GET", "/images/json?filters=%7B%22color%22%3A%5B%22red%22%5D%7D")
    assert status == 400 and "color" in message
    status, message = error("GET", "/images/json?filters=nope")
    assert status == 400 and "filters" in message
    status, message = error("POST", "/images/busybox/tag?repo=UPPER/case")
    assert status == 400 and "must be lowercase" in message
    status, message = error("POST", "/images/create?fromImage=127.0.0.1:1/x&tag=v1",
                            headers={"X-Registry-Auth": "%%%not-base64"})
    assert status == 400 and "X-Registry-Auth" in message
    status, message = error("POST", "/images/load", b"not an image archive")
    assert status == 400 and "invalid image archive" in message
    status, message = error("GET", "/images/..%2F..%2Fetc%2Fpasswd/json")
    assert status == 404
    status, message = error("POST", "/commit?container=nosuch")
    assert status == 404
    status, message = error("POST", "/volumes/create", b'{"Name": "../escape"}')
    assert status == 400 and "invalid volume name" in message

    not_a_tar = docker.top / "not-a-tar"
    not_a_tar.write_bytes(b"plain text\n")
    assert "invalid image archive" in docker.fails("load", "-i", not_a_tar)
    assert "busybox" in docker.ok("images")
