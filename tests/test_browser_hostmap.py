"""The Host tab in a real browser (Debian's Chromium, Playwright) against a real `glassbox up`:
the host's picture counts what the daemon has, and a push or a pull through the web app's own
registry shows every blob the daemon's events name, with the same byte counts. Each test's
final screen is kept in test-artifacts/."""
from __future__ import annotations

from pathlib import Path

import pytest


from tests.test_browser import CHROMIUM, browser, host_of, student, web  # noqa: F401 (fixtures)

BLOB_KINDS = {"blob.pushed", "blob.mounted", "blob.pulled", "blob.skipped"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh installs it)")


def daemon_events(web, host: str) -> list[dict]:
    from app.engine_client import EngineClient
    return list(EngineClient(str(web.host_socket(host))).lines("/glassbox/events?since=0&follow=0"))


def last_transfer(events: list[dict]) -> list[dict]:
    """The blob events of the host's last push or pull: those after the one before it ended."""
    ends = [i for i, e in enumerate(events) if e["kind"] in ("image.pushed", "image.pulled")]
    assert ends, "no push or pull finished on this host"
    start = ends[-2] + 1 if len(ends) > 1 else 0
    return [e for e in events[start:ends[-1]] if e["kind"] in BLOB_KINDS]


def outcome(event: dict) -> str:
    return event["kind"].removeprefix("blob.")


def shown_transfer(page) -> tuple[dict, list]:
    box = page.eval_on_selector("#hostmap-transfer", "b => ({...b.dataset})")
    rows = page.eval_on_selector_all(
        "#hostmap-transfer li[data-digest]",
        "rows => rows.map(r => [r.dataset.digest, r.dataset.outcome, +r.dataset.bytes])")
    return box, rows


def assert_map_matches(page, blobs: list[dict], direction: str) -> dict:
    box, rows = shown_transfer(page)
    assert box["direction"] == direction and box["state"] == "done"
    assert rows == [[e["subject"]["blob"], outcome(e), e["detail"]["bytes"]] for e in blobs]
    moved = "pushed" if direction == "push" else "pulled"
    assert int(box[f"{moved}Bytes"]) == sum(e["detail"]["bytes"] for e in blobs if outcome(e) == moved)
    assert int(box["transferred"]) == sum(outcome(e) == moved for e in blobs)
    assert int(box["skipped"]) == sum(outcome(e) == "skipped" for e in blobs)
    assert int(box["mounted"]) == sum(outcome(e) == "mounted" for e in blobs)
    assert int(box["skippedBytes"]) == sum(e["detail"]["bytes"] for e in blobs if outcome(e) == "skipped")
    return box


def watch_dots(page) -> None:
    """Records every dot that starts along the host↔registry lane: [digest, class]."""
    page.evaluate("""() => {
        window.dots = [];
        new MutationObserver((changes) => { for (const c of changes) for (const n of c.addedNodes)
            window.dots.push([n.dataset.digest, n.getAttribute('class')]); })
          .observe(document.querySelector('#hostmap-svg .hm-dots'), {childList: true});
    }""")


def open_host_tab(page) -> None:
    page.click("#tab-hostmap")
    page.wait_for_selector("#hostmap-view:not([hidden])")
    # busybox is in every new host's image cache: the counts have come in.
    page.wait_for_function("() => +document.querySelector('#hostmap-svg').dataset.images >= 1",
                           timeout=30_000)


def test_the_host_map_counts_what_the_daemon_has(web, student):
    page = student()
    host = host_of(web, page)
    open_host_tab(page)
    assert page.inner_text("#tab-hostmap").strip() == "Host"
    made = web.docker(host, "run", "-d", "--name", "idle", "-v", "data:/data", "busybox", "sleep", "300")
    assert made.returncode == 0, made.stderr
    page.wait_for_function("""() => { const d = document.querySelector('#hostmap-svg').dataset;
        return +d.running === 1 && +d.containers === 1 && +d.volumes === 1; }""", timeout=30_000)
    # A volume no container mounts counts too, and one removed stops counting.
    assert web.docker(host, "volume", "create", "lonely").returncode == 0
    page.wait_for_function("() => +document.querySelector('#hostmap-svg').dataset.volumes === 2",
                           timeout=30_000)
    assert web.docker(host, "volume", "rm", "lonely").returncode == 0
    page.wait_for_function("() => +document.querySelector('#hostmap-svg').dataset.volumes === 1",
                           timeout=30_000)
    images = web.docker(host, "images", "-q", "--no-trunc")
    assert int(page.eval_on_selector("#hostmap-svg", "s => s.dataset.images")) == \
        len(set(images.stdout.split()))
    assert page.is_visible("#hostmap-svg .hm-box[data-part='registry']")
    assert page.inner_text("#hostmap-transfer li, #hostmap-transfer p") != ""
    assert not page.errors


def test_push_then_pull_on_a_second_host_shows_the_daemons_blobs(web, student):
    alice = student()
    a = host_of(web, alice)
    open_host_tab(alice)
    ref = f"127.0.0.1:{web.port}/me/app:v1"
    made = web.docker(a, "run", "--name", "maker", "busybox", "sh", "-c", "echo hello > /hello")
    assert made.returncode == 0, made.stderr
    committed = web.docker(a, "commit", "maker", ref)
    assert committed.returncode == 0, committed.stderr

    # Every dot that starts along the host↔registry lane, by digest and outcome.
    watch_dots(alice)

    # First push: the registry has nothing, every blob moves.
    pushed = web.docker(a, "push", ref)
    assert pushed.returncode == 0, pushed.stderr + pushed.stdout
    alice.wait_for_selector("#hostmap-transfer[data-direction='push'][data-state='done']", timeout=30_000)
    first = last_transfer(daemon_events(web, a))
    assert first and all(e["kind"] == "blob.pushed" for e in first)
    box = assert_map_matches(alice, first, "push")
    assert int(box["transferred"]) == len(first) >= 3  # two layers and the config
    assert "Pushed" in alice.inner_text("#hostmap-transfer")
    assert alice.evaluate("() => window.dots") == \
        [[e["subject"]["blob"], "hm-dot hm-dot-pushed"] for e in first]

    # Second push: the registry has every blob, nothing moves.
    again = web.docker(a, "push", ref)
    assert again.returncode == 0, again.stderr + again.stdout
    alice.wait_for_function(f"""() => {{ const d = document.querySelector('#hostmap-transfer').dataset;
        return d.state === 'done' && +d.skipped === {len(first)}; }}""", timeout=30_000)
    second = last_transfer(daemon_events(web, a))
    assert [e["kind"] for e in second] == ["blob.skipped"] * len(first)
    box = assert_map_matches(alice, second, "push")
    assert int(box["transferred"]) == 0 and int(box["pushedBytes"]) == 0
    assert "Layer already exists" in alice.inner_text("#hostmap-transfer")
    assert alice.evaluate("() => window.dots")[len(first):] == \
        [[e["subject"]["blob"], "hm-dot hm-dot-skipped"] for e in second]

    # The same image under another name in the registry: every blob is mounted from me/app.
    copy = web.docker(a, "tag", ref, f"127.0.0.1:{web.port}/me/copy:v1")
    assert copy.returncode == 0, copy.stderr
    mounted = web.docker(a, "push", f"127.0.0.1:{web.port}/me/copy:v1")
    assert mounted.returncode == 0, mounted.stderr + mounted.stdout
    alice.wait_for_function(f"""() => {{ const d = document.querySelector('#hostmap-transfer').dataset;
        return d.state === 'done' && +d.mounted === {len(first)}; }}""", timeout=30_000)
    third = last_transfer(daemon_events(web, a))
    assert [e["kind"] for e in third] == ["blob.mounted"] * len(first)
    box = assert_map_matches(alice, third, "push")
    assert int(box["transferred"]) == 0 and int(box["mountedBytes"]) == sum(e["detail"]["bytes"] for e in third)
    assert "Mounted from me/app" in alice.inner_text("#hostmap-transfer")

    # A second student, busybox already in the cache: only the committed layer comes over.
    bob = student(locale="ko-KR")
    b = host_of(web, bob)
    assert a != b
    open_host_tab(bob)
    assert bob.inner_text("#tab-hostmap").strip() == "호스트"
    watch_dots(bob)
    pulled = web.docker(b, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr + pulled.stdout
    bob.wait_for_selector("#hostmap-transfer[data-direction='pull'][data-state='done']", timeout=30_000)
    blobs = last_transfer(daemon_events(web, b))
    box = assert_map_matches(bob, blobs, "pull")
    assert int(box["skipped"]) >= 1 and int(box["transferred"]) >= 1
    assert int(box["pulledBytes"]) > 0
    assert bob.evaluate("() => window.dots") == \
        [[e["subject"]["blob"], f"hm-dot hm-dot-{outcome(e)}"] for e in blobs]
    # The picture counts the pulled image and its layer, as the daemon does.
    images = len(set(web.docker(b, "images", "-q", "--no-trunc").stdout.split()))
    bob.wait_for_function(f"""() => {{ const d = document.querySelector('#hostmap-svg').dataset;
        return +d.images === {images} && +d.layers === 2; }}""", timeout=30_000)
    assert not alice.errors and not bob.errors
