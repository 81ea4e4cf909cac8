"""The Build tab in a real browser (Debian's Chromium, Playwright) against a real
`glassbox up`: a docker build on the student's host, seen step by step. The final
screen is kept in test-artifacts/."""
from __future__ import annotations

import json
import threading

import pytest

from sandbox.images import chain_ids
from tests.test_browser import CHROMIUM, browser, host_of, student, web  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh installs it)")

DOCKERFILE = """\
FROM busybox
# the one step that makes a layer
RUN sleep 1 && echo hello > /hello.txt
CMD ["cat", "/hello.txt"]
"""


def step_rows(page) -> list[dict]:
    return page.eval_on_selector_all("#build-dockerfile li[data-step]", """rows => rows.map(r => ({
        step: +r.dataset.step, instruction: r.dataset.instruction, chain: r.dataset.chain || null,
        classes: [...r.classList].filter(c => c !== 'build-step').sort()}))""")


def top_chain(web, host: str, image: str) -> str:
    inspected = web.docker(host, "image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    return chain_ids(json.loads(inspected.stdout)[0]["RootFS"]["Layers"])[-1]


def test_a_build_shows_each_step_with_its_layer_then_all_cached(web, student, tmp_path):
    page = student()
    host = host_of(web, page)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    page.click("#tab-build")
    assert page.is_visible("#build-empty")

    result = {}
    worker = threading.Thread(target=lambda: result.update(
        first=web.docker(host, "build", "-t", "app", str(tmp_path), timeout=120)))
    worker.start()
    try:
        # Live: the RUN step is lit while its temporary container is there.
        page.wait_for_selector("#build-dockerfile li[data-step='2'].running", timeout=60_000)
        page.wait_for_selector("#build-dockerfile li[data-step='2'] .build-container", timeout=30_000)
    finally:
        worker.join(150)
    assert result["first"].returncode == 0, result["first"].stderr
    page.wait_for_selector("#build-status[data-state='done']", timeout=30_000)

    chain = top_chain(web, host, "app")
    rows = step_rows(page)
    assert [(r["step"], r["instruction"], r["classes"]) for r in rows] == [
        (1, "FROM", ["base"]), (2, "RUN", ["built"]), (3, "CMD", ["config-only"])]
    assert rows[1]["chain"] == chain and rows[2]["chain"] is None
    # The temporary container came and went; the file shown is the real one, comment too.
    assert page.is_visible("#build-dockerfile li[data-step='2'] .build-container.gone")
    assert "# the one step that makes a layer" in page.inner_text("#build-dockerfile")
    image_id = json.loads(web.docker(host, "image", "inspect", "app").stdout)[0]["Id"]
    assert page.get_attribute("#build-status", "data-image") == image_id
    assert "app" in page.inner_text("#build-status")

    # A click on the RUN: its layer's details, from the image tree's data.
    page.click("#build-dockerfile li[data-step='2']")
    page.wait_for_selector(f"#build-details[data-node='layer:{chain}'] .build-files", timeout=30_000)
    assert "/hello.txt" in page.inner_text("#build-details")
    page.click("#build-details button.link")
    page.wait_for_selector(f"#tree-details[data-id='layer:{chain}']:not([hidden])", timeout=30_000)
    assert page.get_attribute("#tab-tree", "aria-selected") == "true"

    # The same build again: every step after FROM comes from the cache.
    page.click("#tab-build")
    again = web.docker(host, "build", "-t", "app", str(tmp_path), timeout=120)
    assert again.returncode == 0, again.stderr
    page.wait_for_function("""() => {
        const s = document.querySelector('#build-status');
        return s.dataset.state === 'done' && !document.querySelector('#build-dockerfile .build-container'); }""",
                           timeout=30_000)
    rows = step_rows(page)
    assert [(r["step"], r["classes"]) for r in rows] == [
        (1, ["base"]), (2, ["cached"]), (3, ["cached", "config-only"])]
    assert rows[1]["chain"] == chain
    assert page.inner_text("#build-dockerfile li[data-step='2'] .badge") == "CACHED"
    # The timeline explains the new event in words, not as an unknown kind.
    started = page.inner_text("#timeline li.event[data-kind='build.started'] >> nth=-1")
    assert "Dockerfile" in started and "3 steps" in started
    assert not page.errors


def test_a_failed_build_marks_the_step_it_stopped_at(web, student, tmp_path):
    page = student()
    host = host_of(web, page)
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo before && exit 3\nCMD [\"true\"]\n")
    page.click("#tab-build")
    failed = web.docker(host, "build", str(tmp_path), timeout=120)
    assert failed.returncode != 0
    page.wait_for_selector("#build-status[data-state='failed']", timeout=30_000)
    rows = step_rows(page)
    assert [(r["step"], r["classes"]) for r in rows] == [(1, ["base"]), (2, ["failed"]), (3, ["waiting"])]
    assert "step 2" in page.inner_text("#build-status") and "3" in page.inner_text("#build-status")
    assert not page.errors
