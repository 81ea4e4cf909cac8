"""Push and pull through the classroom registry, for real over HTTP: only what is
missing moves, and every blob that moves (or doesn't) is an event."""
from __future__ import annotations

import json
import subprocess

import pytest

from sandbox.builder import BuildOptions
from sandbox.engine import Engine, EngineError
from sandbox.runtime import ContainerConfig
from tests.test_registry import USERS, serving


@pytest.fixture
def registry(state_dir):
    (state_dir / "open").mkdir()
    with serving(state_dir / "open") as registry:
        yield registry


@pytest.fixture
def classroom(state_dir):
    (state_dir / "classroom").mkdir()
    with serving(state_dir / "classroom", users=USERS) as registry:
        yield registry


@pytest.fixture
def node2(state_dir, host_unchanged):
    """A second Docker host of the same student, on the same machine."""
    engine = Engine(state_dir / "state", host="node2", uid_base=300000)
    yield engine
    engine.close()


def build(engine, state_dir, name: str, dockerfile: str):
    context = state_dir / f"ctx-{name.replace(':', '-').replace('/', '-')}"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    return engine.build(context, BuildOptions(tags=[name]))


def moved(events, kind):
    return [e for e in events if e.kind == kind]


def push(engine, ref, destination, **creds):
    lines = []
    result = engine.push(ref, destination, progress=lines.append, **creds)
    return result, [line.get("status") for line in lines]


def test_push_sends_only_what_the_registry_lacks(engine, state_dir, registry, events):
    app = build(engine, state_dir, "app:v1", "FROM busybox\nRUN echo app > /app\n")
    target = f"{registry.host}/me/app:v1"
    result, statuses = push(engine, "app:v1", target)
    layer_bytes = sum(layer["size"] for layer in app.manifest["layers"])
    assert result["pushed"] == 3 and result["bytes_uploaded"] == layer_bytes + app.manifest["config"]["size"]
    assert statuses.count("Pushed") == 3
    assert {e.subject["blob"] for e in moved(events, "blob.pushed")} == \
        {layer["digest"] for layer in app.manifest["layers"]} | {app.manifest["config"]["digest"]}
    # The registry kept the manifest exactly.
    reply = registry.request("GET", "/v2/me/app/manifests/v1",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert reply.body == engine.images.blob_path(app.manifest_digest).read_bytes()
    # The second push moves nothing.
    before = registry.stats()["bytes_received"]
    events.clear()
    result, statuses = push(engine, "app:v1", target)
    assert result["bytes_uploaded"] == 0 and result["skipped"] == 3
    assert statuses.count("Layer already exists") == 3
    assert registry.stats()["bytes_received"] == before
    assert len(moved(events, "blob.skipped")) == 3 and not moved(events, "blob.pushed")


def test_an_image_sharing_the_base_uploads_only_its_own_layers(engine, state_dir, registry, events):
    build(engine, state_dir, "app:v1", "FROM busybox\nRUN echo app > /app\n")
    app2 = build(engine, state_dir, "app2:v1", "FROM app:v1\nRUN echo app2 > /app2\n")
    push(engine, "app:v1", f"{registry.host}/me/app:v1")
    events.clear()
    result, statuses = push(engine, "app2:v1", f"{registry.host}/me/app2:v1")
    # busybox's and app's layers are in the registry (in another repository): mounted, not sent.
    assert result["mounted"] == 2 and result["pushed"] == 2  # app2's layer and its config
    assert statuses.count("Mounted from me/app") == 2
    assert result["bytes_uploaded"] == app2.manifest["layers"][-1]["size"] + app2.manifest["config"]["size"]


def test_pull_on_another_host_fetches_only_the_layers_it_lacks(engine, node2, state_dir, registry):
    app = build(engine, state_dir, "app:v1", "FROM busybox\nRUN echo from-node1 > /app\n")
    push(engine, "app:v1", f"{registry.host}/me/app:v1")
    seen = []
    node2.bus.subscribe(seen.append)
    lines = []
    image = node2.pull(f"{registry.host}/me/app:v1", progress=lines.append)
    statuses = [line.get("status") for line in lines]
    assert image.id == app.id  # the same image, byte for byte
    # node2 has busybox: only app's own layer crossed the network.
    assert statuses.count("Already exists") == 1 and statuses.count("Pull complete") == 1
    pulled = moved(seen, "blob.pulled")
    assert [e.subject["blob"] for e in pulled] == [app.manifest["layers"][-1]["digest"]]
    assert moved(seen, "blob.skipped")[0].subject["blob"] == app.manifest["layers"][0]["digest"]
    chunks = []
    node2.run(ContainerConfig(image.name, ["cat", "/app"], auto_remove=True), lambda s, d: chunks.append(d))
    assert b"".join(chunks) == b"from-node1\n"
    # Pulling again moves no layer bytes.
    seen.clear()
    node2.pull(f"{registry.host}/me/app:v1")
    assert not moved(seen, "blob.pulled") and len(moved(seen, "blob.skipped")) == 2
    assert moved(seen, "image.pulled")[0].detail["pulled"] == 0


def test_a_push_outside_ones_namespace_is_refused(engine, state_dir, classroom):
    build(engine, state_dir, "work:v1", "FROM busybox\nRUN echo work > /work\n")
    alice = {"username": "alice", "password": USERS["alice"][0]}
    push(engine, "work:v1", f"{classroom.host}/c1/alice/work:v1", **alice)
    with pytest.raises(EngineError, match="DENIED"):
        push(engine, "work:v1", f"{classroom.host}/c1/bob/work:v1", **alice)
    with pytest.raises(EngineError, match="401|UNAUTHORIZED"):
        push(engine, "work:v1", f"{classroom.host}/c1/alice/anon:v1")
    bob = {"username": "bob", "password": USERS["bob"][0]}
    image = engine.pull(f"{classroom.host}/c1/alice/work:v1", **bob)
    assert image.name == f"{classroom.host}/c1/alice/work:v1"
    eve = {"username": "eve", "password": USERS["eve"][0]}
    with pytest.raises(EngineError):
        engine.pull(f"{classroom.host}/c1/alice/work:v1", **eve)


def test_skopeo_reads_what_the_daemon_pushed(engine, state_dir, registry):
    app = build(engine, state_dir, "app:v1", "FROM busybox\nRUN echo app > /app\n")
    push(engine, "app:v1", f"{registry.host}/me/app:v1")
    policy = state_dir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    inspected = subprocess.run(["skopeo", "--policy", str(policy), "inspect", "--tls-verify=false",
                                f"docker://{registry.host}/me/app:v1"],
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Layers"] == [layer["digest"] for layer in app.manifest["layers"]]


def test_bad_references_say_what_is_wrong(engine, registry):
    with pytest.raises(EngineError, match="names no registry"):
        engine.pull("busybox")
    with pytest.raises(EngineError, match="MANIFEST_UNKNOWN|404"):
        engine.pull(f"{registry.host}/me/nothing:here")


def test_the_daemon_connects_only_to_allowed_registries(engine, monkeypatch):
    # A student names the registry; the daemon must not become their network probe.
    with pytest.raises(EngineError, match="not one this classroom may use"):
        engine.pull("10.0.0.5:5000/someone/app:v1")
    with pytest.raises(EngineError, match="not one this classroom may use"):
        engine.push("busybox", "192.168.1.1:5000/me/busybox:v1")
    monkeypatch.setenv("GLASSBOX_REGISTRIES", "10.0.0.5:5000")
    from sandbox.distribution import check_registry
    check_registry("10.0.0.5:5000")  # named by the operator: allowed
    check_registry("127.0.0.1:8000")  # loopback: the classroom registry of glassbox up
