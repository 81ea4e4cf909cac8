"""The lesson panel in a real browser: a student opens a lesson, sends a step's command to
the host terminal with its button, and sees the step's checks pass live; the panel in Korean."""
from __future__ import annotations

import re

from tests.test_browser import ARTIFACTS, browser, student, web  # noqa: F401 (fixtures)


def test_a_student_completes_a_step_by_clicking_its_command(student):
    page = student()
    page.click(".lesson-item[data-lesson='lifecycle']")
    page.wait_for_selector(".step-title")
    assert page.inner_text(".step-title") == "A container that ends at once"
    assert page.locator("#lesson-next").is_disabled()
    page.click(".run-block .run-button")
    # The command went to the host terminal, ran for real, and the checks ticked.
    page.wait_for_selector(".step-status.passed", timeout=30_000)
    assert page.locator(".check-ok").count() == 2
    assert "hello" in page.inner_text(".term-panes")
    page.click("#lesson-next")
    page.wait_for_function("() => document.querySelector('.step-title').textContent.includes('keeps running')")
    assert page.locator(".step-dots button.done").count() == 1
    # A reload comes back to the same step, where it was left.
    page.reload()
    page.wait_for_selector(".step-title", timeout=30_000)
    assert "keeps running" in page.inner_text(".step-title")
    assert page.errors == []


def test_the_lessons_read_in_korean_and_the_switch_changes_them(student):
    page = student(locale="ko-KR")
    page.wait_for_selector(".lesson-item")
    assert "컨테이너는" in page.inner_text("#lesson-list")
    assert page.inner_text("#lessons-toggle") == "레슨"
    page.click(".lesson-item[data-lesson='lifecycle']")
    page.wait_for_selector(".step-title")
    assert page.inner_text(".step-title") == "바로 끝나는 컨테이너"
    assert page.inner_text(".run-button") == "실행 ▸"
    page.select_option("#lang-switch", "en")
    page.wait_for_function("() => document.querySelector('.step-title').textContent === 'A container that ends at once'")
    assert page.inner_text("#lessons-toggle") == "Lessons"
    page.click(".hint-button")
    assert re.search(r"Click the command", page.inner_text(".hint-list"))
    assert page.errors == []


def test_a_several_line_command_with_a_heredoc_runs_as_typed(student):
    """The build lesson writes its Dockerfile with a heredoc: the lines go to the host
    terminal one by one, as typed, and the build after them passes the step."""
    page = student()
    page.click(".lesson-item[data-lesson='build']")
    page.wait_for_selector(".step-title")
    buttons = page.locator(".run-block .run-button")
    buttons.nth(0).click()
    page.locator(".term-panes", has_text='CMD ["cat", "/greeting"]').wait_for(timeout=30_000)
    buttons.nth(1).click()
    page.wait_for_selector(".step-status.passed", timeout=60_000)
    assert "Successfully tagged app:v1" in page.inner_text(".term-panes")
    assert page.errors == []


def test_a_goal_layer_the_tree_matches_opens_in_the_image_tree(student):
    """The goal tree's boxes that the student's tree matches are links: the goal's layer
    "s" is shown, with its details, in the Image tree tab."""
    page = student()
    page.click(".lesson-item[data-lesson='tree-share']")
    page.wait_for_selector(".goal-graph")
    assert page.locator(".goal-box.linked").count() == 0     # nothing built yet
    page.click(".run-block .run-button")
    page.wait_for_selector(".step-status.passed", timeout=60_000)
    linked = page.locator(".goal-box.linked")
    assert linked.count() == 2                                # @busybox and s
    node = linked.nth(1).get_attribute("data-node")
    assert node.startswith("layer:sha256:")
    linked.nth(1).click()
    page.wait_for_selector("#tab-tree[aria-selected=true]")
    page.wait_for_function("() => !document.querySelector('#tree-details').hidden", timeout=15_000)
    assert "sshd" in page.inner_text("#tree-details")         # the layer of RUN echo sshd > /sshd.txt
    assert page.errors == []
