"""docker build, for real: every RUN in a container, layers and cache as BuildKit keys them."""
from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

import pytest

from sandbox.builder import BuildError, BuildOptions
from sandbox.images import chain_ids
from sandbox.runtime import ContainerConfig


def write(context: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = context / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else textwrap.dedent(content).lstrip().encode())
    return context


@pytest.fixture
def context(state_dir):
    path = state_dir / "context"
    path.mkdir()
    return path


def build(engine, context, **options):
    lines = []
    image = engine.build(context, BuildOptions(**options), lines.append)
    return image, "".join(lines)


def output_of(engine, image, cmd=None):
    chunks = []
    status = engine.run(ContainerConfig(image, cmd, auto_remove=True), lambda s, d: chunks.append(d))
    return status.code, b"".join(chunks).decode()


def steps_using_cache(log: str) -> list[int]:
    """Step numbers whose next line is ' ---> Using cache'."""
    lines = log.splitlines()
    return [int(line.split()[1].split("/")[0]) for i, line in enumerate(lines)
            if line.startswith("Step ") and i + 1 < len(lines) and lines[i + 1] == " ---> Using cache"]


TEN_STEPS = """
    FROM busybox
    ENV GREETING=hello
    WORKDIR /app
    COPY app.txt .
    RUN echo "$GREETING" > greeting.txt
    COPY data.txt /data/
    RUN wc -c /data/data.txt > size.txt
    LABEL course=containers
    RUN cat greeting.txt size.txt > summary.txt
    CMD ["cat", "/app/summary.txt"]
"""


def test_a_build_runs_each_step_and_the_image_works(engine, context, events):
    write(context, {"Dockerfile": TEN_STEPS, "app.txt": "app\n", "data.txt": "12345\n"})
    image, log = build(engine, context, tags=["course:v1"])
    assert "Step 1/10 : FROM busybox" in log and "Step 10/10 : CMD" in log
    assert log.count(" ---> Running in ") == 3 and log.count("Removing intermediate container") == 3
    assert f"Successfully built {image.id.removeprefix('sha256:')[:12]}" in log
    assert "Successfully tagged course:v1" in log
    code, out = output_of(engine, "course:v1")
    assert code == 0 and out == "hello\n6 /data/data.txt\n"
    # 1 busybox layer + 2 COPY + 3 RUN; ENV, WORKDIR, LABEL, CMD are config-only.
    history = image.config["history"]
    assert len(image.layers) == 6 == len(image.config["rootfs"]["diff_ids"])
    assert len([h for h in history if not h.get("empty_layer")]) == 6
    assert sum(1 for h in history if h.get("empty_layer")) == 4
    assert image.config["config"]["WorkingDir"] == "/app"
    assert image.config["config"]["Labels"] == {"course": "containers"}
    kinds = [e.kind for e in events]
    assert kinds.count("build.step") == 10 and kinds.count("layer.created") == 5
    assert "build.done" in kinds


def test_an_unchanged_rebuild_is_all_cached_and_gives_the_same_image(engine, context, events):
    write(context, {"Dockerfile": TEN_STEPS, "app.txt": "app\n", "data.txt": "12345\n"})
    first, _ = build(engine, context, tags=["course:v1"])
    events.clear()
    second, log = build(engine, context, tags=["course:v1"])
    assert second.id == first.id
    assert steps_using_cache(log) == list(range(2, 11))
    assert "Running in" not in log
    assert [e.kind for e in events].count("build.cache_hit") == 9
    assert "layer.created" not in [e.kind for e in events]


def test_changed_copy_content_rebuilds_that_step_and_later_only(engine, context):
    write(context, {"Dockerfile": TEN_STEPS, "app.txt": "app\n", "data.txt": "12345\n"})
    build(engine, context, tags=["course:v1"])
    (context / "data.txt").write_text("123456789\n")
    image, log = build(engine, context, tags=["course:v1"])
    assert steps_using_cache(log) == [2, 3, 4, 5]  # up to the RUN before COPY data.txt
    assert log.count(" ---> Running in ") == 2
    assert output_of(engine, image.id)[1] == "hello\n10 /data/data.txt\n"


def test_touching_a_file_without_changing_it_keeps_the_cache(engine, context):
    write(context, {"Dockerfile": TEN_STEPS, "app.txt": "app\n", "data.txt": "12345\n"})
    build(engine, context)
    import os
    os.utime(context / "data.txt", (1, 1))
    _, log = build(engine, context)
    assert steps_using_cache(log) == list(range(2, 11))


def test_a_changed_cmd_rebuilds_nothing(engine, context):
    dockerfile = TEN_STEPS.replace('CMD ["cat", "/app/summary.txt"]',
                                   'CMD ["cat", "/app/greeting.txt"]\n    RUN echo after-cmd > /after')
    write(context, {"Dockerfile": dockerfile, "app.txt": "app\n", "data.txt": "12345\n"})
    build(engine, context)
    write(context, {"Dockerfile": dockerfile.replace("greeting.txt\"]", "size.txt\"]")})
    image, log = build(engine, context)
    assert "Running in" not in log  # the RUN after the changed CMD is still cached
    assert steps_using_cache(log) == [2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert output_of(engine, image.id)[1] == "6 /data/data.txt\n"


def test_no_cache_rebuilds_everything(engine, context):
    write(context, {"Dockerfile": TEN_STEPS, "app.txt": "app\n", "data.txt": "12345\n"})
    build(engine, context)
    _, log = build(engine, context, no_cache=True)
    assert steps_using_cache(log) == [] and log.count("Running in") == 3


def test_multi_stage_copy_from_and_target(engine, context):
    write(context, {"Dockerfile": """
        ARG VERSION=1.0
        FROM busybox AS builder
        ARG VERSION
        RUN mkdir /out && echo "built $VERSION" > /out/artifact && echo junk > /out/junk
        FROM scratch AS final
        COPY --from=builder /out/artifact /artifact
        FROM busybox AS tester
        COPY --from=final /artifact /checked
        RUN cat /checked
        """})
    image, log = build(engine, context, tags=["multi"], build_args={"VERSION": "2.5"})
    assert "built 2.5" in log
    code, out = output_of(engine, "multi", ["cat", "/checked"])
    assert out == "built 2.5\n"
    final, log = build(engine, context, tags=["final-only"], target="final")
    assert "Step 5/5" in log and "tester" not in log.lower().split("successfully")[0].split("step 5/5")[-1]
    assert len(final.layers) == 1  # scratch + one COPY: nothing of the builder's busybox
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        build(engine, context, target="nope")


def test_dockerignore_keeps_files_out_of_the_image_and_the_cache(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nCOPY . /src\nRUN ls -a /src | sort | tr '\\n' ' '\n",
                    ".dockerignore": "# secrets stay home\n*.key\nbuild/**\n!build/keep.txt\n",
                    "main.c": "int main;\n", "id.key": "secret", "build/out.o": "obj",
                    "build/keep.txt": "keep"})
    image, log = build(engine, context, tags=["ignored"])
    listing = [l for l in log.splitlines() if l.startswith(". ")][0]
    assert "main.c" in listing and "id.key" not in listing
    code, out = output_of(engine, "ignored", ["sh", "-c", "ls /src/build"])
    assert out.split() == ["keep.txt"]
    (context / "id.key").write_text("changed secret")
    _, log = build(engine, context, tags=["ignored"])
    assert "Running in" not in log  # an ignored file's change touches no cache key


def test_add_extracts_local_archives_and_refuses_urls(engine, context):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    write(context, {"Dockerfile": "FROM busybox\nADD pkg.tar.gz /opt/\nADD plain.txt /opt/plain.txt\n",
                    "pkg.tar.gz": buffer.getvalue(), "plain.txt": "plain\n"})
    image, _ = build(engine, context, tags=["added"])
    assert output_of(engine, "added", ["cat", "/opt/pkg/readme.txt", "/opt/plain.txt"])[1] == \
        "from the archive\nplain\n"
    write(context, {"Dockerfile": "FROM busybox\nADD https://example.com/x.tar /x\n"})
    with pytest.raises(BuildError, match="no network in this sandbox"):
        build(engine, context)


def test_add_refuses_an_archive_that_escapes(engine, context):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    write(context, {"Dockerfile": "FROM busybox\nADD evil.tar /opt/\n", "evil.tar": buffer.getvalue()})
    with pytest.raises(BuildError, match="outside its root"):
        build(engine, context)


def test_copy_keeps_existing_directory_attributes(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nCOPY note /tmp/note\n", "note": "hi\n"})
    image, _ = build(engine, context, tags=["tmpnote"])
    code, out = output_of(engine, "tmpnote", ["stat", "-c", "%a %U", "/tmp", "/tmp/note"])
    assert out.split("\n")[:2] == ["1777 root", "644 root"]


def test_copy_chown_and_heredoc(engine, context):
    write(context, {"Dockerfile": """
        FROM busybox
        ARG WHO=world
        COPY --chown=nobody:nobody --chmod=600 secret /home/secret
        COPY <<EOF /etc/hello
        hello $WHO
        EOF
        RUN <<EOF
        set -e
        echo "script ran" > /ran
        EOF
        """, "secret": "s\n"})
    image, _ = build(engine, context, tags=["owned"])
    code, out = output_of(engine, "owned", ["sh", "-c", "stat -c '%a %u %g' /home/secret; cat /etc/hello /ran"])
    assert out.splitlines() == ["600 65534 65534", "hello world", "script ran"]


def test_onbuild_triggers_run_in_the_child_build(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nONBUILD RUN echo triggered > /onbuild\n"})
    parent, _ = build(engine, context, tags=["base-with-trigger"])
    assert parent.config["config"]["OnBuild"] == ["RUN echo triggered > /onbuild"]
    write(context, {"Dockerfile": "FROM base-with-trigger\nCMD [\"cat\", \"/onbuild\"]\n"})
    child, log = build(engine, context, tags=["child"])
    assert "# Executing 1 build trigger" in log
    assert output_of(engine, "child")[1] == "triggered\n"
    assert "OnBuild" not in child.config["config"]


def test_config_instructions_are_stored(engine, context):
    write(context, {"Dockerfile": """
        FROM busybox
        ENV A=1 B="two words"
        ENTRYPOINT ["echo"]
        CMD ["default"]
        USER nobody
        WORKDIR /srv
        EXPOSE 80 53/udp
        VOLUME /data
        STOPSIGNAL SIGINT
        SHELL ["/bin/sh", "-ec"]
        HEALTHCHECK --interval=5s CMD true
        LABEL a=b
        MAINTAINER someone
        """})
    image, _ = build(engine, context)
    config = image.config["config"]
    assert "A=1" in config["Env"] and "B=two words" in config["Env"]
    assert config["Entrypoint"] == ["echo"] and config["Cmd"] == ["default"]
    assert config["User"] == "nobody" and config["WorkingDir"] == "/srv"
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGINT"
    assert config["Shell"] == ["/bin/sh", "-ec"]
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "true"] and config["Healthcheck"]["Interval"] == 5 * 10**9
    assert image.config["author"] == "someone"
    assert len(image.layers) == 1  # all config-only


def test_a_failing_run_says_which_command_and_code(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nRUN echo before && exit 3\n"})
    with pytest.raises(BuildError, match=r"The command '/bin/sh -c echo before && exit 3' "
                                         r"returned a non-zero code: 3"):
        build(engine, context)
    assert engine.list() == []  # the intermediate container is gone


def test_dockerfile_errors_name_the_line(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nRUN true\nFROMM busybox\n"})
    with pytest.raises(BuildError, match="line 3"):
        build(engine, context)
    write(context, {"Dockerfile": "FROM nosuchimage\n"})
    with pytest.raises(BuildError, match="nosuchimage"):
        build(engine, context)
    write(context, {"Dockerfile": "FROM busybox\nCOPY missing.txt /\n"})
    with pytest.raises(BuildError, match="missing.txt"):
        build(engine, context)


def test_build_args_and_unused_warning(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nARG NAME=default\nRUN echo \"name=$NAME\"\n"})
    _, log = build(engine, context, build_args={"NAME": "given", "EXTRA": "x"})
    assert "name=given" in log
    assert "[Warning] One or more build-args ['EXTRA'] were not consumed" in log
    _, log = build(engine, context, build_args={"NAME": "other"})
    assert "name=other" in log and "Running in" in log  # a different arg value is a different key


def test_labels_given_to_the_build_are_a_last_config_step(engine, context):
    write(context, {"Dockerfile": "FROM busybox\nLABEL from=dockerfile\n"})
    image, _ = build(engine, context, labels={"course": "containers-101"})
    assert image.config["config"]["Labels"] == {"from": "dockerfile", "course": "containers-101"}
    assert image.config["history"][-1]["created_by"] == 'LABEL "course"="containers-101"'
    assert len(image.layers) == 1


def test_a_build_tells_its_dockerfile_and_ties_each_layer_step_to_its_chain(engine, context, events):
    dockerfile = "FROM busybox\nRUN echo hi > /hi \\\n    && true\nCMD [\"cat\", \"/hi\"]\n"
    write(context, {"Dockerfile": dockerfile})
    image, _ = build(engine, context, tags=["app"])
    started = next(e for e in events if e.kind == "build.started")
    assert started.detail["dockerfile"] == dockerfile and not started.detail["truncated"]
    assert started.detail["total"] == 3 and started.detail["tags"] == ["app"]
    assert [(s["index"], s["instruction"], s["line"]) for s in started.detail["steps"]] == \
        [(1, "FROM", 1), (2, "RUN", 2), (3, "CMD", 4)]
    # The steps as the build.step events name them, so the page can match the two.
    announced = [(e.detail["step"], e.detail["instruction"]) for e in events if e.kind == "build.step"]
    assert announced == [(s["index"], s["original"]) for s in started.detail["steps"]]
    # The RUN's layer, named as the image tree names it: by its ChainID in this image.
    chain = chain_ids(image.config["rootfs"]["diff_ids"])[-1]
    created = [e.detail for e in events if e.kind == "layer.created"]
    assert [(d["step"], d["chain"]) for d in created] == [(2, chain)]
    events.clear()
    build(engine, context, tags=["app"])
    hits = [e.detail for e in events if e.kind == "build.cache_hit"]
    assert [(d["step"], d.get("chain")) for d in hits] == [(2, chain), (3, None)]


def test_build_started_caps_the_dockerfile_it_carries(engine, context, events):
    padding = "# " + "x" * 1000 + "\n"
    write(context, {"Dockerfile": "FROM busybox\n" + padding * 80 + "CMD [\"true\"]\n"})
    build(engine, context)
    started = next(e for e in events if e.kind == "build.started")
    assert started.detail["truncated"] and len(started.detail["dockerfile"].encode()) == 64 << 10
    assert [s["instruction"] for s in started.detail["steps"]] == ["FROM", "CMD"]


def test_a_failed_build_says_where_it_stopped(engine, context, events):
    write(context, {"Dockerfile": "FROM busybox\nENV A=1\nRUN exit 3\nCMD [\"true\"]\n"})
    with pytest.raises(BuildError):
        build(engine, context)
    kinds = [e.kind for e in events if e.kind.startswith("build.")]
    assert kinds[0] == "build.started" and kinds[-1] == "build.failed" and "build.done" not in kinds
    failed = next(e for e in events if e.kind == "build.failed")
    assert failed.detail["step"] == 3 and "non-zero code: 3" in failed.detail["error"]
    events.clear()
    write(context, {"Dockerfile": "FROMM busybox\n"})
    with pytest.raises(BuildError):
        build(engine, context)
    assert not [e for e in events if e.kind.startswith("build.")]  # it never started
