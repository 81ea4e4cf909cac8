"""Lessons as data, and the checks that say when a step is done.

A lesson is a directory under ``lessons/`` (the format is in ``lessons/README.md``): a
``lesson.toml``, and per step a text in each language and a check file. This module loads
and lints them and evaluates a step's checks against a Docker host's real state — what the
daemon's API answers and the events it emitted. It knows nothing about any one lesson.

The checks read the host the way a student's own tools would: ``docker inspect``'s JSON
for containers and images, the volume list, the event stream. Nothing here writes.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable

from markdown_it import MarkdownIt

LANGS = ("ko", "en")
HINT_HEADING = {"en": "Hints", "ko": "힌트"}
LESSON_ID = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
STEP_FILE = re.compile(r"^(\d\d)-([a-z0-9][a-z0-9-]*)\.(en\.md|ko\.md|check\.toml)$")
PLACEHOLDER = re.compile(r"\{(registry|ns|class)\}")
LOOKS_LIKE_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
SOURCES = ("event", "containers", "images", "volumes", "tree")
CHECK_KEYS = {"event": {"where", "since", "min", "max", "label"},
              "containers": {"min", "max", "label"}, "images": {"min", "max", "label"},
              "volumes": {"min", "max", "label"}, "tree": {"label"}}
SINCE = ("step", "lesson", "ever")
OPERATORS = {"eq", "ne", "gt", "gte", "lt", "lte", "matches", "contains", "has", "len", "in", "exists"}
API_CALL = re.compile(r"^(GET|POST|PUT|DELETE) (/[A-Za-z0-9/_.?=&%-]*)$")


class LessonError(Exception):
    """A lesson that can't be used; the message lists every problem found."""


# ------------------------------------------------------------------ the data

@dataclasses.dataclass(frozen=True)
class Text:
    """A step in one language: its title, body (Markdown) and hints (Markdown each)."""
    title: str
    body: str
    hints: tuple[str, ...]
    commands: tuple[str, ...]   # the ```run blocks, in order


@dataclasses.dataclass(frozen=True)
class Check:
    source: str                 # one of SOURCES
    spec: Any                   # the event kind, the where table, or the tree goal
    where: dict
    since: str
    min: int
    max: int | None
    label: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Step:
    slug: str
    text: dict[str, Text]                 # by language
    checks: tuple[Check, ...]
    reference: tuple[str | dict, ...]     # shell commands, or {"api": "POST /path", "body": …}


@dataclasses.dataclass(frozen=True)
class Lesson:
    id: str
    chapter: int
    title: dict[str, str]
    summary: dict[str, str]
    steps: tuple[Step, ...]
    path: Path

    def summary_json(self) -> dict:
        return {"id": self.id, "chapter": self.chapter, "title": self.title,
                "summary": self.summary, "steps": len(self.steps)}


# ------------------------------------------------------------------ loading and linting

def load(root: Path) -> list[Lesson]:
    """Every lesson under ``root``, by chapter; LessonError names every problem."""
    lessons, problems = read_all(Path(root))
    if problems:
        raise LessonError("\n".join(problems))
    return lessons


def lint(root: Path) -> list[str]:
    """Every problem of every lesson under ``root``, one line each (empty: all good)."""
    return read_all(Path(root))[1]


def read_all(root: Path) -> tuple[list[Lesson], list[str]]:
    lessons, problems = [], []
    try:
        directories = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        return [], [f"{root}: can't read the lessons: {e.strerror}"]
    for directory in directories:
        try:
            lesson, found = _read_lesson(directory)
        except (OSError, UnicodeDecodeError) as e:
            lesson, found = None, [f"can't read it: {e}"]
        problems += [f"{directory.name}: {p}" for p in found]
        if lesson is not None:
            lessons.append(lesson)
    for field, what in (("id", "id"), ("chapter", "chapter")):
        seen: dict = {}
        for lesson in lessons:
            value = getattr(lesson, field)
            if value in seen:
                problems.append(f"{lesson.path.name}: {what} {value!r} is also {seen[value]}'s")
            seen[value] = lesson.path.name
    return sorted(lessons, key=lambda l: l.chapter), problems


def _read_lesson(directory: Path) -> tuple[Lesson | None, list[str]]:
    problems: list[str] = []
    try:
        meta = tomllib.loads((directory / "lesson.toml").read_text())
    except FileNotFoundError:
        return None, ["no lesson.toml"]
    except tomllib.TOMLDecodeError as e:
        return None, [f"lesson.toml: {e}"]
    unknown = set(meta) - {"id", "chapter", "title", "summary"}
    if unknown:
        problems.append(f"lesson.toml: unknown keys {sorted(unknown)}")
    if not isinstance(meta.get("id"), str) or not LESSON_ID.match(meta["id"]):
        problems.append("lesson.toml: id must be lower-case letters, digits and '-', e.g. 'lifecycle'")
    chapter = meta.get("chapter")
    if not isinstance(chapter, int) or isinstance(chapter, bool) or not 1 <= chapter <= 99:
        problems.append("lesson.toml: chapter must be the article's chapter number")
    for key in ("title", "summary"):
        problems += _both_languages(meta.get(key), f"lesson.toml: {key}")

    by_number: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.name == "lesson.toml":
            continue
        match = STEP_FILE.match(path.name)
        if not match:
            problems.append(f"{path.name}: not a step file (NN-slug.en.md, NN-slug.ko.md, NN-slug.check.toml)")
            continue
        by_number.setdefault(match[1], {})[match[3]] = path
    steps = []
    for expected, number in enumerate(sorted(by_number), start=1):
        files = by_number[number]
        slugs = {STEP_FILE.match(p.name)[2] for p in files.values()}
        if int(number) != expected:
            problems.append(f"step {number}: steps are numbered 01, 02, … without gaps (expected {expected:02d})")
        if len(slugs) > 1:
            problems.append(f"step {number}: its files have different names {sorted(slugs)}")
        missing = {"en.md", "ko.md", "check.toml"} - set(files)
        if missing:
            problems.append(f"step {number}: missing {', '.join(f'{number}-{min(slugs)}.{m}' for m in sorted(missing))}")
            continue
        step, found = _read_step(min(slugs), files)
        problems += [f"step {number}: {p}" for p in found]
        if step is not None:
            steps.append(step)
    if not by_number:
        problems.append("a lesson needs at least one step")
    if problems:
        return None, problems
    return Lesson(meta["id"], chapter, meta["title"], meta["summary"], tuple(steps), directory), []


def _both_languages(value, where: str) -> list[str]:
    if not isinstance(value, dict) or set(value) != set(LANGS):
        return [f"{where} must have exactly the languages {', '.join(LANGS)}"]
    return [f"{where}.{lang} is empty" for lang in LANGS
            if not isinstance(value[lang], str) or not value[lang].strip()]


def _read_step(slug: str, files: dict[str, Path]) -> tuple[Step | None, list[str]]:
    problems: list[str] = []
    texts = {}
    for lang in LANGS:
        text, found = parse_text(files[f"{lang}.md"].read_text(), lang)
        problems += [f"{lang}.md: {p}" for p in found]
        texts[lang] = text
    if all(texts.values()):
        en, ko = texts["en"], texts["ko"]
        if en.commands != ko.commands:
            problems.append("the ```run blocks differ between en.md and ko.md (commands are not translated)")
        if len(en.hints) != len(ko.hints):
            problems.append(f"en.md has {len(en.hints)} hints, ko.md {len(ko.hints)}")
    try:
        data = tomllib.loads(files["check.toml"].read_text())
    except tomllib.TOMLDecodeError as e:
        return None, problems + [f"check.toml: {e}"]
    checks, found = parse_checks(data)
    problems += [f"check.toml: {p}" for p in found]
    reference = data.get("reference")
    if reference is None and all(texts.values()):
        reference = list(texts["en"].commands)
    found = _lint_reference(reference)
    problems += [f"check.toml: {p}" for p in found]
    if problems:
        return None, problems
    return Step(slug, texts, tuple(checks), tuple(reference)), []


def parse_text(source: str, lang: str) -> tuple[Text | None, list[str]]:
    """A step's Markdown: ``# title``, the body, then ``## Hints`` with a list."""
    problems = []
    lines = source.strip("\n").split("\n")
    if not lines or not lines[0].startswith("# "):
        return None, ["the first line must be the step's title: '# …'"]
    title = lines[0][2:].strip()
    heading = f"## {HINT_HEADING[lang]}"
    positions = [i for i, line in enumerate(lines) if line.strip() == heading]
    if len(positions) != 1:
        return None, [f"needs exactly one '{heading}' section, the last one"]
    body_lines, hint_lines = lines[1:positions[0]], lines[positions[0] + 1:]
    if any(line.startswith("## ") for line in hint_lines):
        problems.append(f"'{heading}' must be the last section")
    hints, current = [], None
    for line in hint_lines:
        if line.startswith("- "):
            current = [line[2:]]
            hints.append(current)
        elif current is not None and (line.startswith("  ") or not line.strip()):
            current.append(line.strip())
        elif line.strip():
            problems.append(f"under '{heading}' every hint is a list item ('- …'): {line[:40]!r}")
    hints_text = tuple(" ".join(part for part in h if part).strip() for h in hints)
    if not hints_text or not all(hints_text):
        problems.append(f"'{heading}' needs at least one hint")
    body = "\n".join(body_lines).strip()
    commands = tuple(run_blocks(body))
    if not body:
        problems.append("the step has no text")
    for name in LOOKS_LIKE_PLACEHOLDER.findall(source):
        if not PLACEHOLDER.fullmatch("{" + name + "}"):
            problems.append(f"unknown placeholder {{{name}}} (known: {{registry}}, {{ns}}, {{class}})")
    if re.search(r"<[A-Za-z/!][^>]*>", re.sub(r"```.*?```|`[^`]*`", "", body, flags=re.S)):
        problems.append("raw HTML is not shown (write Markdown)")
    return Text(title, body, hints_text, commands), problems


def run_blocks(markdown: str) -> Iterable[str]:
    for token in _markdown().parse(markdown):
        if token.type == "fence" and token.info.strip() == "run":
            yield token.content.rstrip("\n")


def parse_checks(data: dict) -> tuple[list[Check], list[str]]:
    problems = []
    unknown = set(data) - {"reference", "check"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (a check file has 'reference' and [[check]])")
    raw = data.get("check")
    if not isinstance(raw, list) or not raw:
        return [], problems + ["needs at least one [[check]]"]
    checks = []
    for n, item in enumerate(raw, start=1):
        where = f"check {n}"
        sources = [s for s in SOURCES if s in item]
        if len(sources) != 1:
            problems.append(f"{where}: needs exactly one of {', '.join(SOURCES)}")
            continue
        source = sources[0]
        extra = set(item) - {source} - CHECK_KEYS[source]
        if extra:
            problems.append(f"{where}: {source} checks don't take {sorted(extra)}")
        problems += [f"{where}: {p}" for p in _both_languages(item.get("label"), "label")]
        spec, conditions = item[source], item.get("where", {})
        if source == "event":
            if not isinstance(spec, str) or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", spec):
                problems.append(f"{where}: event must be an event kind such as 'process.exited'")
        elif source == "tree":
            problems += [f"{where}: {p}" for p in _lint_goal(spec)]
        else:
            conditions = spec
        if not isinstance(conditions, dict):
            problems.append(f"{where}: the conditions must be a table")
            continue
        problems += [f"{where}: {p}" for p in _lint_where(conditions)]
        if item.get("since", "step") not in SINCE:
            problems.append(f"{where}: since must be one of {', '.join(SINCE)}")
        for key in ("min", "max"):
            value = item.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                problems.append(f"{where}: {key} must be a whole number ≥ 0")
        checks.append(Check(source, spec, conditions, item.get("since", "step"),
                            item.get("min", 1), item.get("max"), item.get("label") or {}))
    return checks, problems


NUMBER = (int, float)
# What each operator's argument must be (a check with another would fail at run time).
ARGUMENTS = {"gt": NUMBER, "gte": NUMBER, "lt": NUMBER, "lte": NUMBER, "in": (list,),
             "matches": (str,), "contains": (str, int, float, bool), "exists": (bool,),
             "len": (int, dict), "has": (dict, str, int, float, bool)}


def _lint_where(conditions: dict, depth: int = 0) -> list[str]:
    problems = []
    for path, condition in conditions.items():
        if not isinstance(condition, dict):
            continue
        unknown = set(condition) - OPERATORS
        if unknown:
            problems.append(f"{path}: unknown operators {sorted(unknown)} (known: {', '.join(sorted(OPERATORS))})")
        for op, arg in condition.items():
            wanted = ARGUMENTS.get(op)
            if wanted and (not isinstance(arg, wanted) or (isinstance(arg, bool) and bool not in wanted)):
                problems.append(f"{path}: {op} takes {' or '.join(t.__name__ for t in wanted)}, not {arg!r}")
        if "matches" in condition:
            try:
                re.compile(str(condition["matches"]))
            except re.error as e:
                problems.append(f"{path}: bad regular expression: {e}")
        if isinstance(condition.get("has"), dict) and depth < 4:
            problems += _lint_where(condition["has"], depth + 1)
        if isinstance(condition.get("len"), dict):
            problems += _lint_where({f"{path} (len)": condition["len"]}, depth + 1)
    return problems


def _lint_goal(goal) -> list[str]:
    if not isinstance(goal, dict) or not isinstance(goal.get("images"), dict) or not goal["images"]:
        return ["tree needs images = { TAG = [layers…] }"]
    problems = []
    if set(goal) - {"images", "containers"}:
        problems.append(f"tree takes images and containers, not {sorted(set(goal) - {'images', 'containers'})}")
    depth_of: dict[str, set] = {}
    for tag, chain in goal["images"].items():
        if not isinstance(chain, list) or not chain or not all(isinstance(x, str) and x for x in chain):
            problems.append(f"tree image {tag}: a list of layer letters (and @image)")
            continue
        if any(x.startswith("@") for x in chain[1:]):
            problems.append(f"tree image {tag}: @image can only come first (an image's layers are a chain from the bottom)")
        for position, item in enumerate(chain):
            if not item.startswith("@"):
                depth_of.setdefault(item, set()).add((chain[0] if chain[0].startswith("@") else "", position))
    for letter, places in depth_of.items():
        if len(places) > 1:
            problems.append(f"tree: layer {letter!r} sits at different places in different images, "
                            "so it can't be one shared layer")
    containers = goal.get("containers", {})
    if not isinstance(containers, dict) or not all(isinstance(v, str) for v in containers.values()):
        problems.append("tree containers must be { NAME = IMAGE }")
    return problems


def _lint_reference(reference) -> list[str]:
    if not isinstance(reference, list) or not reference:
        return ["reference must list the commands that complete the step (or give ```run blocks)"]
    problems = []
    for item in reference:
        if isinstance(item, str) and item.strip():
            continue
        if isinstance(item, dict) and isinstance(item.get("api"), str) and API_CALL.match(item["api"]) \
                and set(item) <= {"api", "body"}:
            continue
        problems.append(f"reference item {item!r}: a shell command, or {{ api = \"POST /path\", body = {{…}} }}")
    return problems


# ------------------------------------------------------------------ showing a step

def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False})


def placeholders(registry: str, namespace: str, classroom: str) -> dict[str, str]:
    """The values of {registry}, {ns} and {class} (lessons/README.md)."""
    return {"registry": registry, "ns": namespace, "class": classroom}


def free_play(registry: str, host: str) -> dict[str, str]:
    """The placeholders of a student in no classroom: their space is play/HOST."""
    return placeholders(registry, f"play/{host}", "play")


def fill(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), text)


# What a step's Markdown may become on the page. The page builds these elements itself
# (createElement, textContent): no HTML string from here is ever parsed by the browser.
TAGS = {"p", "strong", "em", "s", "code", "pre", "ul", "ol", "li", "blockquote", "a", "br", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}


def render(text: Text, values: dict[str, str]) -> dict:
    """A step's text for the page, placeholders filled: the Markdown as a tree of
    ``{"t": tag, "c": [children], "a": {attributes}}`` and strings; a ```run block is
    ``{"t": "pre", "run": N, …}`` and the page adds its button."""
    md = _markdown()
    return {"title": fill(text.title, values),
            "body": to_tree(md.parse(fill(text.body, values))),
            "commands": [fill(c, values) for c in text.commands],
            "hints": [to_tree(md.parseInline(fill(h, values))) for h in text.hints]}


def to_tree(tokens) -> list:
    root: list = []
    stack = [root]
    runs = 0
    for token in tokens:
        if token.type == "inline":
            stack[-1].extend(to_tree(token.children or []))
        elif token.nesting == 1:
            if token.hidden:            # a tight list's paragraph: its text goes straight in
                stack.append(stack[-1])
                continue
            node = {"t": token.tag if token.tag in TAGS else "span", "c": []}
            if token.tag == "a":
                href = str(token.attrGet("href") or "")
                node["a"] = {"href": href if re.match(r"^(https?://|/|#)", href) else "#"}
            elif token.tag == "ol" and token.attrGet("start"):
                node["a"] = {"start": str(token.attrGet("start"))}
            stack[-1].append(node)
            stack.append(node["c"])
        elif token.nesting == -1:
            stack.pop()
        elif token.type in ("text", "html_inline", "html_block"):
            stack[-1].append(token.content)
        elif token.type == "code_inline":
            stack[-1].append({"t": "code", "c": [token.content]})
        elif token.type in ("fence", "code_block"):
            node = {"t": "pre", "c": [{"t": "code", "c": [token.content.rstrip("\n")]}]}
            if token.type == "fence" and token.info.strip() == "run":
                node["run"] = runs
                runs += 1
            stack[-1].append(node)
        elif token.type == "softbreak":
            stack[-1].append("\n")
        elif token.type == "hardbreak":
            stack[-1].append({"t": "br", "c": []})
        elif token.type == "hr":
            stack[-1].append({"t": "hr", "c": []})
    return root


# ------------------------------------------------------------------ checking a step

MISSING = object()


def lookup(document, path: str):
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else MISSING
        elif isinstance(value, dict):
            value = value.get(part, MISSING)
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def holds(value, condition) -> bool:
    if isinstance(condition, list):            # a list is compared whole
        return value == condition
    if not isinstance(condition, dict):
        if isinstance(value, list):            # one of its items
            return condition in value
        return value is not MISSING and value == condition
    return all(_operator(value, op, arg) for op, arg in condition.items())


def _operator(value, op: str, arg) -> bool:
    if op == "exists":
        return (value is not MISSING and value is not None) == bool(arg)
    if value is MISSING:
        return op == "ne"
    number = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (value, arg))
    match op:
        case "eq": return value == arg
        case "ne": return value != arg
        case "gt": return number and value > arg
        case "gte": return number and value >= arg
        case "lt": return number and value < arg
        case "lte": return number and value <= arg
        case "in":   # a list holds one of them (RepoTags in [a, b]), or a value is one of them
            return any(v in arg for v in value) if isinstance(value, list) else value in arg
        case "matches": return isinstance(value, str) and re.search(str(arg), value) is not None
        case "contains":
            return (isinstance(value, str) and str(arg) in value) or (isinstance(value, list) and arg in value)
        case "has":
            return isinstance(value, list) and any(
                matches(item, arg) if isinstance(arg, dict) else item == arg for item in value)
        case "len":
            return isinstance(value, (list, str, dict)) and holds(len(value), arg)
    return False


def matches(document, conditions: dict) -> bool:
    return all(holds(lookup(document, path), condition) for path, condition in conditions.items())


def fill_conditions(value, values: dict[str, str]):
    if isinstance(value, str):
        return fill(value, values)
    if isinstance(value, list):
        return [fill_conditions(v, values) for v in value]
    if isinstance(value, dict):
        return {fill(k, values): fill_conditions(v, values) for k, v in value.items()}
    return value


class HostView:
    """What checks read of one host, fetched at most once per evaluation.

    ``get(path)`` is a GET on the host's API answering JSON; ``events`` the host's events
    the web app holds (oldest first); ``since`` the seq a step or lesson began after."""

    def __init__(self, get: Callable[[str], Any], events: list[dict], since: dict[str, int]):
        self.get = get
        self.events = events
        self.since = since
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, fetch: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = fetch()
        return self._cache[key]

    def containers(self) -> list[dict]:
        return self._once("containers", lambda: [
            self.get(f"/containers/{c['Id']}/json") for c in self.get("/containers/json?all=1")])

    def images(self) -> list[dict]:
        return self._once("images", lambda: [
            self.get(f"/images/{i['Id']}/json") for i in self.get("/images/json")])

    def volumes(self, with_files: bool) -> list[dict]:
        found = self._once("volumes", lambda: self.get("/volumes").get("Volumes") or [])
        if with_files:
            for volume in found:
                if "Files" not in volume:
                    volume["Files"] = self.get(f"/glassbox/volumes/{volume['Name']}/files")["Files"]
        return found

    def image(self, ref: str) -> dict | None:
        """The image a tag (or id) names, as ``docker inspect`` shows it."""
        # A tag is after the last "/" (127.0.0.1:8000/ns/app has a port, not a tag).
        tagged = ":" in ref.rsplit("/", 1)[-1]
        wanted = ref if tagged or ref.startswith("sha256") else f"{ref}:latest"
        for image in self.images():
            if wanted in (image.get("RepoTags") or []) or image["Id"] == ref:
                return image
        return None


@dataclasses.dataclass
class Result:
    ok: bool
    label: dict[str, str]
    why: str = ""            # for a failed check: what is missing (English, for tests and logs)
    goal: dict | None = None  # for a tree check: image → matched?
    # For a tree check: image → the tree node of each item of its goal chain that matched
    # ("layer:<ChainID>", or None), so the page can show a goal's layer in the student's tree.
    nodes: dict | None = None


def evaluate(step: Step, view: HostView, values: dict[str, str]) -> list[Result]:
    results = [check_one(check, view, values) for check in step.checks]
    for result in results:
        result.label = fill_conditions(result.label, values)
    return results


def check_one(check: Check, view: HostView, values: dict[str, str]) -> Result:
    conditions = fill_conditions(check.where, values)
    if check.source == "tree":
        return _check_tree(check, view, values)
    if check.source == "event":
        since = view.since.get(check.since, 0) if check.since != "ever" else 0
        found = [e for e in view.events if e["seq"] > since and e["kind"] == check.spec
                 and matches(e, conditions)]
        what = f"{check.spec} events"
    else:
        documents = {"containers": view.containers, "images": view.images,
                     "volumes": lambda: view.volumes(any(k.startswith("Files") for k in conditions))}
        found = [d for d in documents[check.source]() if matches(d, conditions)]
        what = check.source
    count = len(found)
    ok = count >= check.min and (check.max is None or count <= check.max)
    why = "" if ok else (f"{count} {what} match {conditions}; wanted at least {check.min}"
                         + (f" and at most {check.max}" if check.max is not None else ""))
    return Result(ok, check.label, why)


def _check_tree(check: Check, view: HostView, values: dict[str, str]) -> Result:
    goal = fill_conditions(check.spec, values)
    nodes: dict[str, list] = {}
    problems, matched = tree_problems(goal, view, nodes)
    return Result(not problems, check.label, "; ".join(problems), matched, nodes)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """A layer's place in the tree: ChainID(L0) = DiffID(L0); ChainID(L0..n) =
    sha256(ChainID(L0..n-1) + " " + DiffID(Ln)) — as the image tree names its layer nodes.
    The daemon's own (sandbox/images.py) is not imported: the web tier imports nothing of
    the daemon's; a test holds the two equal."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if chain:
            diff_id = "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
        chain.append(diff_id)
    return chain


def tree_problems(goal: dict, view: HostView, nodes: dict | None = None) -> tuple[list[str], dict[str, bool]]:
    """Compares the goal graph with the host's images: layer letters are bound to real
    layers (a layer is its whole chain from the bottom, as a ChainID), one letter to one
    layer. Returns what differs, and for each goal image whether it matched; ``nodes``
    receives, per goal image, the tree node each goal item stands for (None where unmatched).

    Two passes, so that the answer doesn't depend on the order the goal lists its images:
    first every image's layer for every letter, then a letter holds only where all the
    images agree on its layer and no other letter has that layer."""
    problems, matched = [], {}
    nodes = {} if nodes is None else nodes
    placed: dict[str, list] = {}                        # image → per goal item: (key, node) or None
    keys_of: dict[str, set] = collections.defaultdict(set)     # letter → the layers it landed on
    letters_of: dict[tuple, set] = collections.defaultdict(set)  # layer → the letters on it
    for tag, chain in goal["images"].items():
        image = view.image(tag)
        if image is None:
            problems.append(f"no image {tag}")
            matched[tag] = False
            continue
        layers = list(image.get("RootFS", {}).get("Layers") or [])
        chains = chain_ids(layers)
        items: list = [None] * len(chain)
        position, ok = 0, True
        for index, item in enumerate(chain):
            if item.startswith("@"):
                base = view.image(item[1:])
                base_layers = list((base or {}).get("RootFS", {}).get("Layers") or [])
                if base is None or layers[:len(base_layers)] != base_layers:
                    problems.append(f"{tag} is not built on {item[1:]}")
                    ok = False
                    break
                position = len(base_layers)
                items[index] = ("@", f"layer:{chains[position - 1]}" if position else None)
                continue
            if position >= len(layers):
                problems.append(f"{tag} has {len(layers)} layers, fewer than the goal's")
                ok = False
                break
            key = tuple(layers[:position + 1])
            keys_of[item].add(key)
            letters_of[key].add(item)
            items[index] = (key, f"layer:{chains[position]}")
            position += 1
        if ok and position != len(layers):
            problems.append(f"{tag} has {len(layers)} layers, more than the goal's {position}")
            ok = False
        placed[tag] = items
        matched[tag] = ok
    for letter, keys in keys_of.items():
        if len(keys) > 1:
            problems.append(f"layer {letter} is not one layer in every image that should share it")
    for key, letters in letters_of.items():
        if len(letters) > 1:
            problems.append(f"layers {', '.join(sorted(letters))} should differ but are one layer")
    for tag, items in placed.items():
        found = nodes.setdefault(tag, [None] * len(items))
        for index, (letter, item) in enumerate(zip(goal["images"][tag], items)):
            if item is None:
                continue
            key, node = item
            agreed = key == "@" or (len(keys_of[letter]) == 1 and len(letters_of[key]) == 1)
            if agreed:
                found[index] = node
            else:
                matched[tag] = False
    for name, image_ref in goal.get("containers", {}).items():
        image = view.image(image_ref)
        found = [c for c in view.containers() if c.get("Name") == f"/{name}"]
        if not found or image is None or found[0].get("Image") != image["Id"]:
            problems.append(f"no container {name} of image {image_ref}")
            matched[f"container:{name}"] = False
        else:
            matched[f"container:{name}"] = True
    return problems, matched
