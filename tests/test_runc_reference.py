"""runc as a behavioural reference: the same probes, the same busybox rootfs,
runc configured like Docker's defaults — the answers must agree."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sandbox.lockdown import DOCKER_DEFAULT_CAPS
from sandbox.runtime import ContainerConfig

PROBE = r"""
echo pid=$$
hostname
echo net=$(ls /sys/class/net)
grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status
for p in /proc/kcore /proc/keys /proc/timer_list /proc/acpi /sys/firmware; do
  [ -e $p ] && echo "$p bytes=$(cat $p 2>/dev/null | head -c 16 | wc -c) entries=$(ls $p 2>/dev/null | wc -l)"
done
echo x > /proc/sys/kernel/domainname 2>/dev/null && echo proc-sys=writable || echo proc-sys=read-only
echo x > /proc/sysrq-trigger 2>/dev/null && echo sysrq=writable || echo sysrq=refused
touch /sys/x 2>/dev/null && echo sys=writable || echo sys=read-only
ls -d /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/pts /dev/shm /dev/ptmx | tr '\n' ' '; echo
head -c 4 /dev/zero | wc -c
mount -t tmpfs none /mnt 2>/dev/null && echo mount=allowed || echo mount=denied
echo uid=$(id -u)
[ $(ls /proc | grep -cE '^[0-9]+$') -le 5 ] && echo procs=only-the-containers
"""


@pytest.fixture
def runc_bundle(state_dir, engine):
    if not shutil.which("runc"):
        pytest.skip("runc is not installed (./test installs it)")
    bundle = state_dir / "bundle"
    bundle.mkdir()
    shutil.copytree(engine.images.get("busybox").layers[0], bundle / "rootfs", symlinks=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    caps = [f"CAP_{c}" for c in DOCKER_DEFAULT_CAPS]
    spec["process"].update(terminal=False, args=["sh", "-c", PROBE],
                           capabilities={k: caps for k in ("bounding", "effective", "permitted")})
    spec["hostname"] = "reference"
    spec["root"]["readonly"] = False
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def run_runc(bundle, state_dir) -> str:
    result = subprocess.run(["runc", "--root", str(state_dir / "runc"), "run", "--bundle", str(bundle),
                             f"glassbox-ref-{state_dir.name}"], capture_output=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_glassbox_and_runc_agree_on_what_a_container_sees(engine, runc_bundle, state_dir):
    reference = run_runc(runc_bundle, state_dir)
    chunks = []
    status = engine.run(ContainerConfig("busybox", ["sh", "-c", PROBE], hostname="reference",
                                        auto_remove=True), lambda s, d: s == "stdout" and chunks.append(d))
    ours = b"".join(chunks).decode()
    assert status.code == 0
    assert ours.splitlines() == reference.splitlines()
    # And what they agree on is what a container should see.
    assert "pid=1" in ours and "net=lo" in ours and "mount=denied" in ours
    assert "procs=only-the-containers" in ours
    assert "CapBnd:\t00000000a80425fb" in ours and "NoNewPrivs:\t1" in ours
