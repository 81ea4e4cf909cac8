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
import tempfile
import time
from pathlib import Path

from sandbox.engine import Engine
from sandbox.runtime import ContainerConfig


def main(args) -> int:
    if args.name == "start":
        figures = bench_start(args.n, args.state_dir)
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
