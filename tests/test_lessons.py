"""The lessons: the linter, the check language, and every lesson run for real.

For every lesson, on a fresh Docker host of a real ``glassbox up``: each step's checks fail
before its reference commands and pass after them, step after step, as a student goes.
"""
from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

from app import lessons
from tests.test_web import web  # noqa: F401 (fixture: a real glassbox up)

ROOT = Path(__file__).resolve().parent.parent / "lessons"
CHAPTERS = range(1, 12)   # DESIGN.md's chapter map


# ------------------------------------------------------------------ the linter

def test_every_lesson_passes_the_linter():
    assert lessons.lint(ROOT) == []


def test_the_lint_command_names_each_problem(tmp_path):
    import subprocess
    import sys
    glassbox = str(Path(sys.executable).parent / "glassbox")
    clean = subprocess.run([glassbox, "lessons", "lint"], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and clean.stdout == "" and "11 lessons" in clean.stderr
    write_lesson(tmp_path, {**GOOD, "01-a.ko.md": "# 가\n\n글.\n"})
    bad = subprocess.run([glassbox, "lessons", "lint", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "01-x: step 01: ko.md: needs exactly one '## 힌트' section" in bad.stdout


def test_there_is_one_lesson_per_chapter_of_the_article():
    assert sorted(lesson.chapter for lesson in lessons.load(ROOT)) == list(CHAPTERS)


def test_every_step_says_what_its_checks_look_for_in_both_languages():
    for lesson in lessons.load(ROOT):
        for step in lesson.steps:
            for check in step.checks:
                assert check.label["en"] and check.label["ko"], (lesson.id, step.slug)
            assert re.search(r"[가-힣]", step.text["ko"].body), f"{lesson.id}/{step.slug}: ko.md is not in Korean"


def write_lesson(root: Path, files: dict[str, str]) -> Path:
    directory = root / "01-x"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return root


GOOD = {
    "lesson.toml": """
        id = "x"
        chapter = 1
        title = { en = "X", ko = "엑스" }
        summary = { en = "x", ko = "엑스" }
        """,
    "01-a.en.md": "# A\n\nText.\n\n```run\ndocker ps\n```\n\n## Hints\n- one\n",
    "01-a.ko.md": "# 가\n\n글.\n\n```run\ndocker ps\n```\n\n## 힌트\n- 하나\n",
    "01-a.check.toml": """
        [[check]]
        containers = { "Name" = "/a" }
        label = { en = "a", ko = "가" }
        """,
}


def test_a_good_lesson_lints_clean(tmp_path):
    assert lessons.lint(write_lesson(tmp_path, GOOD)) == []
    step = lessons.load(tmp_path)[0].steps[0]
    assert step.reference == ("docker ps",)   # the run blocks, when no reference is given
    assert step.text["ko"].hints == ("하나",)


@pytest.mark.parametrize("change, complaint", [
    ({"01-a.ko.md": "# 가\n\n글.\n\n```run\ndocker ps -a\n```\n\n## 힌트\n- 하나\n"}, "run blocks differ"),
    ({"01-a.ko.md": "# 가\n\n글.\n\n```run\ndocker ps\n```\n\n## Hints\n- 하나\n"}, "'## 힌트'"),
    ({"01-a.en.md": "# A\n\nText {nope}.\n\n```run\ndocker ps\n```\n\n## Hints\n- one\n"}, "unknown placeholder {nope}"),
    ({"01-a.en.md": "# A\n\n<script>x</script>\n\n```run\ndocker ps\n```\n\n## Hints\n- one\n"}, "raw HTML"),
    ({"01-a.check.toml": "[[check]]\nimages = { \"Id\" = { near = 1 } }\nlabel = { en = \"a\", ko = \"가\" }\n"}, "unknown operators"),
    ({"01-a.check.toml": "[[check]]\nimages = {}\ncontainers = {}\nlabel = { en = \"a\", ko = \"가\" }\n"}, "exactly one of"),
    ({"01-a.check.toml": "[[check]]\nevent = \"process.exited\"\n"}, "label must have"),
    ({"01-a.check.toml": "[[check]]\ntree = { images = { \"a\" = [\"x\", \"y\"], \"b\" = [\"y\"] } }\n"
                         "label = { en = \"a\", ko = \"가\" }\n"}, "different places"),
    ({"01-a.check.toml": "reference = [{ api = \"rm -rf /\" }]\n[[check]]\nimages = {}\n"
                         "label = { en = \"a\", ko = \"가\" }\n"}, "reference item"),
    ({"02-b.en.md": "# B\n\nx\n\n## Hints\n- y\n"}, "missing 02-b.check.toml, 02-b.ko.md"),
    ({"03-c.en.md": "# C\n"}, "without gaps"),
    ({"notes.txt": "x"}, "not a step file"),
    ({"lesson.toml": "id = \"X!\"\nchapter = 1\ntitle = { en = \"X\" }\nsummary = { en = \"x\", ko = \"x\" }\n"},
     "exactly the languages"),
])
def test_the_linter_says_what_is_wrong(tmp_path, change, complaint):
    problems = lessons.lint(write_lesson(tmp_path, {**GOOD, **change}))
    assert any(complaint in p for p in problems), problems
    with pytest.raises(lessons.LessonError):
        lessons.load(tmp_path)


def test_run_blocks_render_as_commands_and_raw_html_as_text(tmp_path):
    text, problems = lessons.parse_text(
        "# T {ns}\n\nSee `x` *now* & <b>.\n\n```run\ndocker push {registry}/{ns}/app\n```\n\n"
        "- one\n- [two](javascript:alert(1))\n\n## Hints\n- a `{class}` hint\n", "en")
    assert text is not None
    shown = lessons.render(text, {"registry": "127.0.0.1:8000", "ns": "c1/ann", "class": "c1"})
    assert shown["title"] == "T c1/ann"
    paragraph, run, items = shown["body"]
    # Raw HTML is text (the page sets it with textContent), never an element.
    assert paragraph == {"t": "p", "c": ["See ", {"t": "code", "c": ["x"]}, " ",
                                         {"t": "em", "c": ["now"]}, " & <b>."]}
    assert run == {"t": "pre", "run": 0, "c": [{"t": "code", "c": ["docker push 127.0.0.1:8000/c1/ann/app"]}]}
    assert items["t"] == "ul" and items["c"][0] == {"t": "li", "c": ["one"]}
    assert items["c"][1]["c"] == ["[two](javascript:alert(1))"]   # never a javascript: link
    assert shown["commands"] == ["docker push 127.0.0.1:8000/c1/ann/app"]
    assert shown["hints"] == [["a ", {"t": "code", "c": ["c1"]}, " hint"]]


def test_every_tag_a_lesson_renders_to_is_one_the_page_builds():
    def tags(nodes):
        for node in nodes:
            if isinstance(node, dict):
                yield node["t"]
                yield from tags(node["c"])
    for lesson in lessons.load(ROOT):
        for step in lesson.steps:
            for lang in lessons.LANGS:
                shown = lessons.render(step.text[lang], {"registry": "r", "ns": "n", "class": "c"})
                assert set(tags(shown["body"])) | set(tags(sum(shown["hints"], []))) <= lessons.TAGS


# ------------------------------------------------------------------ the check language

class FakeView(lessons.HostView):
    """Pure logic only: the documents a host would answer (the real ones are below)."""

    def __init__(self, images=(), containers=(), events=(), since=None):
        super().__init__(lambda path: None, list(events), since or {"step": 0, "lesson": 0})
        self._cache = {"images": list(images), "containers": list(containers)}


def image(tag, *layers, id=None):
    return {"Id": id or f"sha256:{tag}", "RepoTags": [tag], "RootFS": {"Layers": list(layers)}}


def test_conditions_follow_paths_and_operators():
    doc = {"State": {"Status": "exited", "ExitCode": 137}, "Names": ["/a", "/b"], "Mounts": [{"Name": "v"}]}
    assert lessons.matches(doc, {"State.Status": "exited", "State.ExitCode": {"gte": 128, "lt": 200}})
    assert lessons.matches(doc, {"Names": "/b", "Mounts": {"has": {"Name": "v"}, "len": 1}})
    assert lessons.matches(doc, {"Mounts.0.Name": {"matches": "^v$"}, "Nope": {"exists": False}})
    assert lessons.matches(doc, {"Names": {"in": ["/x", "/b"]}, "State.Status": {"in": ["exited", "dead"]}})
    assert not lessons.matches(doc, {"Names": {"in": ["/x"]}})
    assert not lessons.matches(doc, {"State.Status": "running"})
    assert not lessons.matches(doc, {"State.ExitCode": {"gt": "x"}})   # a string never compares with a number
    assert not lessons.matches(doc, {"Mounts.3.Name": "v"})


def test_event_checks_count_only_the_events_since_the_step_began():
    check = lessons.Check("event", "oom.killed", {}, "step", 1, None, {"en": "", "ko": ""})
    events = [{"seq": 5, "kind": "oom.killed", "subject": {}, "detail": {}}]
    assert not lessons.check_one(check, FakeView(events=events, since={"step": 5, "lesson": 0}), {}).ok
    assert lessons.check_one(check, FakeView(events=events, since={"step": 4, "lesson": 0}), {}).ok


GOAL = {"images": {"app:v1": ["@busybox", "a", "b"], "app2:v1": ["@busybox", "a", "c"]}}


def test_the_goal_tree_matches_whatever_the_digests():
    view = FakeView([image("busybox:latest", "B"), image("app:v1", "B", "x1", "x2"),
                     image("app2:v1", "B", "x1", "y9")])
    nodes = {}
    assert lessons.tree_problems(GOAL, view, nodes) == ([], {"app:v1": True, "app2:v1": True})
    # Each goal item names the tree's node for it: the shared "a" is one node in both.
    chain = lessons.chain_ids(["B", "x1", "x2"])
    assert nodes["app:v1"] == [f"layer:{chain[0]}", f"layer:{chain[1]}", f"layer:{chain[2]}"]
    assert nodes["app2:v1"][:2] == nodes["app:v1"][:2] and nodes["app2:v1"][2] != nodes["app:v1"][2]


def test_the_goal_tree_answers_the_same_whatever_order_it_lists_its_images():
    # app:v1 sits on the wrong layer: both images that should share "s" are marked, not
    # whichever the goal happened to list first.
    images = [image("busybox:latest", "B"), image("sshd:v1", "B", "s1"), image("app:v1", "B", "zz", "a1")]
    for order in (["sshd:v1", "app:v1"], ["app:v1", "sshd:v1"]):
        goal = {"images": {tag: {"sshd:v1": ["@busybox", "s"], "app:v1": ["@busybox", "s", "a"]}[tag]
                           for tag in order}}
        nodes = {}
        problems, matched = lessons.tree_problems(goal, FakeView(images), nodes)
        assert matched == {"sshd:v1": False, "app:v1": False}, order
        assert any("layer s is not one layer" in p for p in problems)
        assert nodes["sshd:v1"][1] is None and nodes["app:v1"][2] is not None   # "a" alone is fine


def test_a_reference_with_a_registry_port_names_the_latest_tag():
    view = FakeView([image("127.0.0.1:8000/c1/ann/app:latest", "B")])
    assert view.image("127.0.0.1:8000/c1/ann/app")["Id"] == "sha256:127.0.0.1:8000/c1/ann/app:latest"


def test_a_list_is_compared_whole_and_operators_check_their_arguments(tmp_path):
    doc = {"Config": {"Cmd": ["echo", "hi"]}}
    assert lessons.matches(doc, {"Config.Cmd": ["echo", "hi"]})
    assert not lessons.matches(doc, {"Config.Cmd": ["echo"]})
    assert lessons.matches(doc, {"Config.Cmd": "hi"})            # a plain value: one of its items
    bad = {**GOOD, "01-a.check.toml": '[[check]]\ncontainers = { "Id" = { in = 3 }, "Name" = { gt = "x" } }\n'
                                      'label = { en = "a", ko = "가" }\n'}
    problems = lessons.lint(write_lesson(tmp_path, bad))
    assert any("in takes list, not 3" in p for p in problems), problems
    assert any("gt takes int or float, not 'x'" in p for p in problems), problems


def test_chain_ids_are_the_ones_the_image_store_uses():
    from sandbox.images import chain_ids
    diffs = [f"sha256:{c * 64}" for c in "abc"]
    assert lessons.chain_ids(diffs) == chain_ids(diffs)


@pytest.mark.parametrize("images, complaint", [
    ([image("busybox:latest", "B"), image("app:v1", "B", "x1", "x2")], "no image app2:v1"),
    # The middle layers have the same content but sit on different bases: not one layer.
    ([image("busybox:latest", "B"), image("app:v1", "B", "x1", "x2"), image("app2:v1", "B", "z", "x1")],
     "is not one layer in every image"),
    ([image("busybox:latest", "B"), image("app:v1", "B", "x1", "x2"), image("app2:v1", "B", "x1", "x2")],
     "should differ"),
    ([image("busybox:latest", "B"), image("app:v1", "B", "x1", "x2", "x3"), image("app2:v1", "B", "x1", "y")],
     "more than the goal's"),
    ([image("busybox:latest", "B"), image("app:v1", "Q", "x1", "x2"), image("app2:v1", "B", "x1", "y")],
     "not built on busybox"),
])
def test_the_goal_tree_says_how_a_tree_differs(images, complaint):
    problems, matched = lessons.tree_problems(GOAL, FakeView(images))
    assert any(complaint in p for p in problems), problems
    assert not all(matched.values())


# ------------------------------------------------------------------ every lesson, for real

@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
@pytest.mark.parametrize("lesson", lessons.load(ROOT), ids=lambda lesson: f"{lesson.chapter:02d}-{lesson.id}")
def test_the_reference_commands_make_every_check_pass_and_not_before(web, lesson):
    from sandbox.lessonharness import LessonHost
    host = LessonHost(web, f"lesson-{lesson.id}")
    try:
        lesson_start = host.last_seq()
        for number, step in enumerate(lesson.steps, start=1):
            since = {"step": host.last_seq(), "lesson": lesson_start}
            before = lessons.evaluate(step, host.view(since), host.values)
            assert not all(r.ok for r in before), \
                f"step {number} ({step.slug}) passes before its commands ran"
            transcript = [host.run(item) for item in step.reference]
            after = host.wait_for_checks(step, since)
            failed = [f"{r.label['en']}: {r.why}" for r in after if not r.ok]
            assert not failed, f"step {number} ({step.slug}):\n" + "\n".join(failed + transcript)
    finally:
        host.close()
