"""A classroom in a real browser (Debian's Chromium): the instructor creates it, a student
joins with the code and a name, completes a step, and the instructor's dashboard shows it;
the instructor presents their host and the student watches it, read-only."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_browser import ARTIFACTS, CHROMIUM, browser  # noqa: F401 (fixtures)
from tests.test_classroom import web  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed")




@pytest.fixture
def people(request, web, browser):
    """Browser contexts (each a person with their own cookie); screenshots kept at the end."""
    pages = []

    def person(locale="en-US", width=1400):
        context = browser.new_context(viewport={"width": width, "height": 860}, locale=locale)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        pages.append(page)
        return page
    yield person
    ARTIFACTS.mkdir(exist_ok=True)
    for i, page in enumerate(pages):
        try:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i + 1}.png"))
        except Exception:
            pass
        page.context.close()


def create_classroom(web, teacher, name="Containers, day 1"):
    teacher.goto(web.url + "/classroom/new")
    teacher.fill("#name", name)
    teacher.click("button[type=submit]")
    teacher.wait_for_selector("#join-code")
    return teacher.inner_text("#join-code").strip()


def join(web, student, code, name, link=None):
    student.goto(link or web.url + "/join")
    if not link:
        student.fill("#code", code.lower())
    student.fill("#display-name", name)
    student.click("button[type=submit]")
    student.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
    student.wait_for_selector("#classroom-banner:not([hidden])")


def test_a_student_joins_completes_a_step_and_the_dashboard_shows_it(web, people):
    teacher, student = people(), people()
    code = create_classroom(web, teacher)
    teacher.wait_for_selector("#students-empty:not([hidden])")
    join(web, student, code, "민지")
    assert "민지" in student.inner_text("#classroom-banner")

    row = teacher.locator("#students tr[data-student]")
    row.wait_for()
    assert row.locator(".student-name").inner_text() == "민지"
    assert "free play" in row.locator(".student-lesson").inner_text()

    student.click(".lesson-item[data-lesson='lifecycle']")
    student.wait_for_selector(".step-title")
    teacher.wait_for_function(
        "() => document.querySelector('#students .student-lesson').textContent.includes('A container lives')")
    assert teacher.locator("#students .student-step").inner_text().startswith("1 of 4")
    teacher.wait_for_selector("#students .student-checks .mark")   # the step's checks, none yet
    student.click(".run-block .run-button")
    student.wait_for_selector(".step-status.passed", timeout=30_000)
    teacher.wait_for_function(
        "() => document.querySelector('#students .student-step').textContent.includes('(1 done)')", timeout=30_000)
    assert "done" in teacher.locator("#students .student-stuck").inner_text()
    assert teacher.locator("#students .student-checks .mark.ok").count() == 2
    assert "2. A container lives as long as its main process: 1" in teacher.inner_text("#students-summary")

    # "Everyone, open chapter 4": the student's page opens it.
    teacher.select_option("#assign-lesson", "tree-share")
    teacher.click("#assign button[type=submit]")
    student.wait_for_function("() => document.querySelector('.lesson-title').textContent.startsWith('4.')")
    assert "opened the lesson" in student.inner_text("#notice")

    # A hint from the dashboard reaches the student's page.
    teacher.once("dialog", lambda dialog: dialog.accept("look at the Containers tab"))
    row.locator("button", has_text="Hint").click()
    student.wait_for_selector(".notice-message")
    assert "look at the Containers tab" in student.inner_text("#notice")
    assert teacher.errors == [] and student.errors == []


def test_the_instructor_presents_and_the_student_watches_read_only(web, people):
    teacher, student = people(), people()
    code = create_classroom(web, teacher, name="demo")
    dashboard = teacher
    link = teacher.get_attribute("#join-link", "href")
    assert link == f"{web.url}/join?code={code}"
    join(web, student, code, "sam", link=link)   # the link has the code in it

    # Presenting before the instructor's own terminal is open: the window waits for it.
    dashboard.click("#present")
    dashboard.wait_for_selector("#present[aria-pressed=true]")
    student.wait_for_selector("#watch-overlay:not([hidden])", timeout=30_000)
    frame = student.frame_locator("#watch-frame")
    frame.locator(".watch-banner").wait_for(timeout=30_000)
    frame.locator(".term-panes", has_text="Waiting for your instructor's terminal").wait_for(timeout=30_000)
    workspace = teacher.context.new_page()
    workspace.goto(web.url + "/")
    workspace.wait_for_selector("#connection[data-state='connected']", timeout=30_000)
    workspace.wait_for_selector(".term-panes .xterm")

    workspace.click(".term-panes .xterm")
    workspace.keyboard.type("echo shown-to-the-class\n")
    frame.locator(".term-panes", has_text="shown-to-the-class").wait_for(timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    student.screenshot(path=str(ARTIFACTS / "classroom-student-watching.png"))
    # Keys typed in the watching window go nowhere.
    frame.locator(".term-panes .xterm").click()
    student.keyboard.type("echo from-a-student\n")
    workspace.wait_for_timeout(1000)
    assert "from-a-student" not in workspace.inner_text(".term-panes")

    dashboard.click("#present")
    student.wait_for_selector("#watch-overlay", state="hidden", timeout=30_000)
    assert student.errors == []


def test_the_dashboard_reads_in_korean(web, people):
    teacher = people(locale="ko-KR")
    create_classroom(web, teacher, name="컨테이너 1일차")
    teacher.wait_for_function("() => document.querySelector('#end-class').textContent === '수업 끝내기'")
    assert "아직 참여한 학생이 없습니다" in teacher.inner_text("#students-empty")
    teacher.select_option("#lang-switch", "en")
    teacher.wait_for_function("() => document.querySelector('#end-class').textContent === 'End the class'")
    assert teacher.errors == []
