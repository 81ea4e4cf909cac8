"""``glassbox bench NAME``: figures, each ending with one line of JSON.

``start``: start→exit of a container running ``true`` through one long-lived
engine (and, for honesty, its whole life: create, start, exit, remove), against
``runc run`` (which creates, starts, waits and deletes) on the same busybox
rootfs, measured in the same run. Plus the host memory one idle container costs.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox.engine import Engine
from sandbox.runtime import ContainerConfig


def main(args) -> int:
    if args.name == "start":
        figures = bench_start(args.n, args.state_dir)
    elif args.name == "build":
        figures = bench_build(args.state_dir)
    elif args.name == "distribution":
        figures = bench_distribution()
    elif args.name == "cli":
        figures = bench_cli(args.n)
    elif args.name == "events":
        from sandbox.bench_web import bench_events
        figures = bench_events(min(args.n, 200) if args.n != 30 else 50)
    elif args.name == "lessons":
        from sandbox.bench_lessons import bench_lessons
        figures = bench_lessons(students=args.n)
    elif args.name == "graphs":
        from sandbox.bench_graphs import bench_graphs
        figures = bench_graphs()
    else:
        raise SystemExit(f"unknown benchmark {args.name}")
    print(json.dumps(figures))
    return 0


def summary(samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3),
            "max_ms": round(max(ms), 3), "n": len(ms)}


def bench_start(n: int, state_dir: str | None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    engine = Engine(state_dir or workdir / "state")
    try:
        image = engine.images.get("busybox")
        engine.run(ContainerConfig("busybox", ["true"], auto_remove=True))  # warm up
        ours, lifecycle = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            c = engine.create(ContainerConfig("busybox", ["true"]))
            t1 = time.perf_counter()
            engine.start(c)
            status = engine.wait(c)
            t2 = time.perf_counter()
            engine.remove(c)
            t3 = time.perf_counter()
            ours.append(t2 - t1)
            lifecycle.append(t3 - t0)
            if status.code != 0:
                raise SystemExit(f"true exited with {status.describe()}")
        runc = bench_runc(image.layers, workdir, n)
        memory = idle_memory(engine)
    finally:
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
    glass, whole, peer = summary(ours), summary(lifecycle), summary(runc)
    ratio = round(glass["median_ms"] / peer["median_ms"], 3)
    whole_ratio = round(whole["median_ms"] / peer["median_ms"], 3)
    print(f"glassbox start->exit of `true`: median {glass['median_ms']} ms "
          f"(min {glass['min_ms']}, max {glass['max_ms']}, n={n})")
    print(f"glassbox whole life (create+start+exit+remove): median {whole['median_ms']} ms "
          f"(min {whole['min_ms']}, max {whole['max_ms']})")
    print(f"runc run (create+start+exit+delete) of `true`: median {peer['median_ms']} ms "
          f"(min {peer['min_ms']}, max {peer['max_ms']}, n={n})")
    print(f"ratio start->exit / runc run: {ratio} (target <= 0.5); whole life / runc run: {whole_ratio}")
    print(f"one idle running container: {memory['cgroup_bytes'] / 1024:.0f} KiB charged to its "
          f"cgroup, {memory['pss_bytes'] / 1024:.0f} KiB PSS of its processes, "
          f"{memory['host_bytes_per_container'] / 1024:.0f} KiB less MemAvailable per container "
          f"({memory['containers']} at once)")
    return {"bench": "start", "glassbox_start_to_exit": glass, "glassbox_whole_life": whole,
            "runc_run": peer, "ratio": ratio, "whole_life_ratio": whole_ratio, "memory": memory}


def bench_runc(layers: list[Path], workdir: Path, n: int) -> list[float]:
    """``runc run`` on a copy of the same busybox layer, with runc's default spec."""
    if not shutil.which("runc"):
        raise SystemExit("runc is not installed (the setup installs it)")
    bundle = workdir / "bundle"
    bundle.mkdir()
    rootfs = bundle / "rootfs"
    shutil.copytree(layers[0], rootfs, symlinks=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    spec["root"] = {"path": str(rootfs), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(spec))
    runc_root = workdir / "runc-state"
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        subprocess.run(["runc", "--root", str(runc_root), "run", "--bundle", str(bundle),
                        f"glassbox-bench-{os.getpid()}-{i}"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if i:  # the first run warms caches, as ours does
            times.append(time.perf_counter() - t0)
    return times


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def idle_memory(engine: Engine, count: int = 10) -> dict:
    before = mem_available()
    containers = []
    for _ in range(count):
        c = engine.create(ContainerConfig("busybox", ["sleep", "3600"], auto_remove=True))
        engine.start(c)
        containers.append(c)
    time.sleep(1.0)
    after = mem_available()
    first = containers[0]
    cgroup_bytes = first.cgroup.stats()["memory_bytes"] if first.cgroup else 0
    pids = first.cgroup.pids() if first.cgroup else set()
    pss_bytes = sum(pss(p) for p in pids)
    for c in containers:
        engine.remove(c, force=True)
    return {"cgroup_bytes": cgroup_bytes, "pss_bytes": pss_bytes,
            "host_bytes_per_container": max(0, (before - after) // count), "containers": count}


BENCH_DOCKERFILE = """\
FROM busybox
ENV STAGE=bench
WORKDIR /app
COPY app.txt .
RUN echo "$STAGE" > stage.txt
COPY data/ /data/
RUN cat /data/* | wc -c > size.txt
RUN mkdir -p /out && cp stage.txt size.txt /out/
RUN ls -la /out > listing.txt
CMD ["cat", "/out/size.txt"]
"""


def bench_build(state_dir: str | None, rounds: int = 5) -> dict:
    """``build``: a 10-step Dockerfile cold and fully cached; one cache hit; commit vs tar."""
    from sandbox.builder import BuildOptions

    workdir = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    engine = Engine(state_dir or workdir / "state")
    try:
        context = workdir / "context"
        (context / "data").mkdir(parents=True)
        (context / "Dockerfile").write_text(BENCH_DOCKERFILE)
        (context / "app.txt").write_text("app\n")
        for i in range(10):
            (context / "data" / f"part{i}").write_bytes(os.urandom(64 * 1024))
        engine.build(context, BuildOptions(tags=["warmup"], no_cache=True))  # warm the page cache
        cold, cached, hits = [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            engine.build(context, BuildOptions(tags=["bench"], no_cache=True))
            cold.append(time.perf_counter() - t0)
            seen = []
            unsubscribe = engine.bus.subscribe(lambda e: seen.append((time.perf_counter(), e.kind)))
            t0 = time.perf_counter()
            engine.build(context, BuildOptions(tags=["bench"]))
            cached.append(time.perf_counter() - t0)
            unsubscribe()
            # A hit's cost: from its step's announcement to the next one.
            for (t, kind), (t_next, _) in zip(seen, seen[1:]):
                if kind == "build.step":
                    hits.append(t_next - t)
        commit, tar = bench_commit(engine, workdir)
    finally:
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
    cold_s, cached_s, hit_s = summary(cold), summary(cached), summary(hits)
    ratio = round(cached_s["median_ms"] / cold_s["median_ms"], 4)
    commit_s, tar_s = summary(commit), summary(tar)
    commit_ratio = round(commit_s["median_ms"] / tar_s["median_ms"], 3)
    print(f"10-step build, cold (--no-cache): median {cold_s['median_ms']} ms (n={rounds})")
    print(f"10-step build, fully cached: median {cached_s['median_ms']} ms; ratio {ratio} (target <= 0.10)")
    print(f"one cached step (cache lookup, COPY checksum included): median {hit_s['median_ms']} ms, "
          f"max {hit_s['max_ms']} ms (target <= 5 ms)")
    print(f"commit of a container with 20 MB of changes: median {commit_s['median_ms']} ms; "
          f"tar of the same upper dir: {tar_s['median_ms']} ms; ratio {commit_ratio}")
    return {"bench": "build", "cold": cold_s, "cached": cached_s, "ratio": ratio,
            "cache_hit": hit_s, "commit_20mb": commit_s, "tar_20mb": tar_s,
            "commit_tar_ratio": commit_ratio}


def bench_commit(engine: Engine, workdir: Path, rounds: int = 5) -> tuple[list[float], list[float]]:
    """engine.commit of 20 MB of changes against GNU tar of the same upper dir to a file."""
    c = engine.create(ContainerConfig("busybox", ["sh", "-c", "mkdir /payload && for i in $(seq 1 20); do "
                                      "head -c 1048576 /dev/urandom > /payload/f$i; done"]))
    engine.start(c)
    engine.wait(c)
    commit, tar = [], []
    upper = c.rw_dir / "upper"
    for i in range(rounds):
        t0 = time.perf_counter()
        image = engine.commit(c, f"committed:{i}")
        commit.append(time.perf_counter() - t0)
        target = workdir / f"upper-{i}.tar"
        t0 = time.perf_counter()
        subprocess.run(["tar", "-cf", str(target), "-C", str(upper), "."], check=True)
        with open(target, "rb") as f:
            os.fsync(f.fileno())  # the commit's blob is on disk too
        tar.append(time.perf_counter() - t0)
        target.unlink()
        engine.images.untag(image.name)
    engine.remove(c)
    engine.gc()
    return commit, tar


def serve_registry(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """The web app's registry under gunicorn on a free loopback port, as ``glassbox up`` runs it."""
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"REGISTRY_ROOT": str(root)}
    checkout = Path(__file__).resolve().parent.parent
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "8",
                                   "--no-control-socket", "-b", f"127.0.0.1:{port}",
                                   f"app:create_app({config!r})"], cwd=checkout, stdout=out,
                                  stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).read()
            return server, f"127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the registry did not start: {log.read_text()}")


def bench_distribution(rounds: int = 5, size: int = 100 * 1000 * 1000) -> dict:
    """``distribution``: pull of an image with a 100 MB layer vs skopeo copy of it, and a
    repeated pull's bytes."""
    import io
    import tarfile as tarlib

    workdir = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    server, registry = serve_registry(workdir / "registry", workdir / "registry.log")
    pusher = Engine(workdir / "pusher")
    try:
        store = pusher.images
        with store.lock():
            with store.writing_layer() as (out, layer):
                with tarlib.open(fileobj=out, mode="w|") as tar:
                    info = tarlib.TarInfo("big.bin")
                    info.size = size
                    tar.addfile(info, io.BytesIO(os.urandom(size)))
            base = store.get("busybox")
            config = json.loads(json.dumps(base.config))
            config["rootfs"]["diff_ids"].append(layer["digest"])
            config["history"].append({"created_by": "bench: 100 MB of random bytes"})
            store.put_image(config, list(base.manifest["layers"]) + [dict(layer)], "big:v1")
        reference = f"{registry}/bench/big:v1"
        pusher.push("big:v1", reference)
        policy = workdir / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        ours, skopeo, repeat_bytes = [], [], []
        for i in range(rounds):
            puller = Engine(workdir / f"puller-{i}")  # a fresh host: nothing of the layer on disk
            try:
                t0 = time.perf_counter()
                _, stats = puller.distribution.pull(reference)
                ours.append(time.perf_counter() - t0)
                _, again = puller.distribution.pull(reference)
                repeat_bytes.append(again["bytes_downloaded"] - config_size(puller, reference))
            finally:
                puller.close()
                shutil.rmtree(workdir / f"puller-{i}", ignore_errors=True)
            target = workdir / f"skopeo-{i}"
            t0 = time.perf_counter()
            subprocess.run(["skopeo", "--policy", str(policy), "copy", "--preserve-digests",
                            "--src-tls-verify=false", f"docker://{reference}", f"oci:{target}:big"],
                           check=True, capture_output=True)
            skopeo.append(time.perf_counter() - t0)
            shutil.rmtree(target, ignore_errors=True)
    finally:
        pusher.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    ours_s, peer = summary(ours), summary(skopeo)
    ratio = round(ours_s["median_ms"] / peer["median_ms"], 3)
    print(f"pull of an image with a {size // 10**6} MB layer (download, verify, unpack): "
          f"median {ours_s['median_ms']} ms (n={rounds})")
    print(f"skopeo copy of the same image to an OCI directory: median {peer['median_ms']} ms")
    print(f"ratio {ratio} (target <= 1.5); layer bytes moved by a repeated pull: {max(repeat_bytes)}")
    return {"bench": "distribution", "pull": ours_s, "skopeo_copy": peer, "ratio": ratio,
            "repeated_pull_layer_bytes": max(repeat_bytes)}


def config_size(engine: Engine, reference: str) -> int:
    image = engine.images.get(reference)
    return image.manifest["config"]["size"]


def bench_cli(n: int) -> dict:
    """``cli``: ``docker run --rm busybox true`` through the real CLI against the daemon vs
    ``runc run`` on the same rootfs; ``docker ps`` with 100 running containers."""
    docker = shutil.which("docker")
    if docker is None:
        raise SystemExit("no docker CLI on this machine (the setup installs one)")
    workdir = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    state = workdir / "state"
    glassbox = str(Path(sys.executable).parent / "glassbox")
    daemon = subprocess.Popen([glassbox, "daemon", "--state-dir", str(state)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, DOCKER_HOST=f"unix://{state / 'hosts/default/docker.sock'}",
               HOME=str(workdir))

    def docker_cli(*args, **kwargs):
        return subprocess.run([docker, *args], env=env, capture_output=True, **kwargs)

    try:
        deadline = time.monotonic() + 60
        while docker_cli("version").returncode != 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start")
            time.sleep(0.1)
        docker_cli("run", "--rm", "busybox", "true", check=True)  # warm up
        runs = []
        for _ in range(n):
            t0 = time.perf_counter()
            docker_cli("run", "--rm", "busybox", "true", check=True)
            runs.append(time.perf_counter() - t0)
        layer = next((state / "layers").iterdir())
        runc = bench_runc([layer], workdir, n)
        for i in range(100):
            docker_cli("run", "-d", "--name", f"idle{i}", "busybox", "sleep", "600", check=True)
        ps = []
        for _ in range(10):
            t0 = time.perf_counter()
            listed = docker_cli("ps", "-q", check=True).stdout.split()
            ps.append(time.perf_counter() - t0)
        if len(listed) != 100:
            raise SystemExit(f"docker ps listed {len(listed)} containers, not 100")
        docker_cli("rm", "-f", *[f"idle{i}" for i in range(100)])
    finally:
        daemon.terminate()
        daemon.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
    ours, peer, listing = summary(runs), summary(runc), summary(ps)
    ratio = round(ours["median_ms"] / peer["median_ms"], 3)
    print(f"docker run --rm busybox true (real CLI -> glassbox): median {ours['median_ms']} ms "
          f"(min {ours['min_ms']}, max {ours['max_ms']}, n={n})")
    print(f"runc run on the same rootfs: median {peer['median_ms']} ms; ratio {ratio} (target <= 3)")
    print(f"docker ps with 100 running containers: median {listing['median_ms']} ms (n=10)")
    return {"bench": "cli", "docker_run": ours, "runc_run": peer, "ratio": ratio, "docker_ps_100": listing}
