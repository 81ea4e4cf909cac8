"""Accessibility, checked by axe-core (Deque's engine, from npm) in Debian's Chromium:
no WCAG 2 A/AA violation on the student's page — the lesson list, a step with its goal
tree, every tab — nor on the classroom's pages."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401 (fixtures)
from tests.test_classroom import web  # noqa: F401 (fixture)

AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or not AXE.exists(),
                                reason="needs Debian's chromium and axe-core (npm ci)")


def violations(page) -> list[str]:
    page.add_script_tag(content=AXE.read_text())
    found = page.evaluate("""async () => {
        const result = await axe.run(document, {runOnly: ["wcag2a", "wcag2aa"]});
        return result.violations.map((v) => `${v.id} (${v.impact}): ` +
            v.nodes.map((n) => n.target.join(" ") + " " + ((n.any[0] || {}).message || "")).join("; "));
    }""")
    return found


@pytest.fixture
def context(request, browser):
    # axe is added as a script of the test's own: the pages' CSP would refuse it.
    made = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    yield made
    ARTIFACTS.mkdir(exist_ok=True)
    for i, page in enumerate(made.pages):
        try:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i + 1}.png"))
        except Exception:
            pass
    made.close()


def test_the_classroom_pages_have_no_violations(web, context, browser):
    teacher = context.new_page()
    teacher.goto(web.url + "/classroom/new")
    assert violations(teacher) == []
    teacher.fill("#name", "a11y")
    teacher.click("button[type=submit]")
    teacher.wait_for_selector("#join-code")
    code = teacher.inner_text("#join-code").strip()
    student = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True).new_page()
    try:
        student.goto(web.url + "/join")
        assert violations(student) == []
        student.fill("#code", code)
        student.fill("#display-name", "ann")
        student.click("button[type=submit]")
        student.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
        teacher.wait_for_selector("#students tr[data-student]")
        assert violations(teacher) == []
    finally:
        student.context.close()


def test_the_students_page_has_no_violations_in_any_view(web, context):
    page = context.new_page()
    page.goto(web.url + "/")
    page.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
    page.wait_for_selector(".lesson-item")
    assert violations(page) == []
    page.click(".lesson-item[data-lesson='tree-share']")
    page.wait_for_selector(".goal-graph")
    page.click(".run-block .run-button")
    page.wait_for_selector(".step-status.passed", timeout=60_000)
    page.click(".hint-button")
    assert violations(page) == []
    for tab in ("containers", "tree", "build", "hostmap"):
        page.click(f"#tab-{tab}")
        page.wait_for_timeout(800)
        assert violations(page) == [], tab
