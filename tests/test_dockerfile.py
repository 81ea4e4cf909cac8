"""The Dockerfile parser and Docker's word rules: BuildKit's conformance data, then our own
cases for heredocs, errors, build stages and expansion."""
from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.dockerfile import (
    DockerfileError, ShellLex, arg_declarations, env_pairs, go_duration_ns,
    healthcheck_config, parse, stages,
)

def conformance_dir() -> Path:
    """BuildKit's data in the workplace's ``shared/`` (``../shared`` from the checkout, or
    ``GLASSBOX_SHARED``, or the workplace's own copy for clones elsewhere)."""
    import os
    candidates = [Path(os.environ["GLASSBOX_SHARED"])] if os.environ.get("GLASSBOX_SHARED") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    for shared in candidates:
        if (shared / "conformance" / "dockerfile" / "parser").is_dir():
            return shared / "conformance" / "dockerfile"
    raise RuntimeError("BuildKit's conformance data was not found: set GLASSBOX_SHARED to the "
                       f"shared/ directory (looked in {', '.join(map(str, candidates))})")


CONFORMANCE = conformance_dir()
PARSER_CASES = sorted(p for p in (CONFORMANCE / "parser").iterdir() if p.is_dir())
NEGATIVE_CASES = sorted(p for p in (CONFORMANCE / "parser-negative").iterdir() if p.is_dir())

# What each rejected file's error must talk about.
NEGATIVE_REASONS = {
    "empty_dockerfile": "no instructions",
    "only_comments": "no instructions",
    "env_no_value": "ENV must have two arguments",
    "shykes-nested-json": "every element must be a string",
}

# The environment BuildKit's lex_test.go gives every envVarTest line.
ENV_VAR_TEST_ENV = ["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]


def env_var_cases():
    """envVarTest lines ``PLATFORM|input|expected``; W (Windows) lines do not apply here."""
    cases = []
    text = (CONFORMANCE / "shell" / "envVarTest").read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        platform, source, expected = (field.strip() for field in line.split("|", 2))
        if platform in ("A", "U"):
            cases.append(pytest.param(source, expected, id=f"line{number}:{source}"))
    return cases


def words_cases():
    """wordsTest lines ``input | word,word``; ``ENV k=v`` lines add to the environment of
    the lines after them, trailing spaces included."""
    cases = []
    env: list[str] = []
    text = (CONFORMANCE / "shell" / "wordsTest").read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("ENV "):
            env.append(line[3:].lstrip(" "))
            continue
        source, expected = line.split("|")
        cases.append(pytest.param(source.strip(), expected.lstrip(" ").split(","), list(env),
                                  id=f"line{number}:{source.strip()}"))
    return cases


# --- conformance ----------------------------------------------------------------------

def test_conformance_suite_is_all_there():
    assert len(PARSER_CASES) == 33
    assert sorted(p.name for p in NEGATIVE_CASES) == sorted(NEGATIVE_REASONS)
    assert len(env_var_cases()) == 228     # 230 cases, 2 of them Windows-only
    assert len(words_cases()) == 24


@pytest.mark.parametrize("case", PARSER_CASES, ids=lambda p: p.name)
def test_dump_matches_buildkit_byte_for_byte(case):
    parsed = parse((case / "Dockerfile").read_bytes())
    dumped = parsed.dump().encode("utf-8", "surrogateescape")
    assert dumped == (case / "result").read_bytes()


@pytest.mark.parametrize("case", NEGATIVE_CASES, ids=lambda p: p.name)
def test_rejected_dockerfile_raises_a_clear_error(case):
    with pytest.raises(DockerfileError) as caught:
        parse((case / "Dockerfile").read_bytes())
    assert NEGATIVE_REASONS[case.name] in str(caught.value)
    assert str(caught.value).startswith("Dockerfile")


@pytest.mark.parametrize("source, expected", env_var_cases())
def test_word_expansion_matches_envvartest(source, expected):
    lex = ShellLex()
    if expected == "error":
        with pytest.raises(DockerfileError, match="failed to process"):
            lex.process_word(source, ENV_VAR_TEST_ENV)
    else:
        assert lex.process_word(source, ENV_VAR_TEST_ENV) == expected


@pytest.mark.parametrize("source, expected, env", words_cases())
def test_word_splitting_matches_wordstest(source, expected, env):
    lex = ShellLex()
    if expected == ["error"]:
        with pytest.raises(DockerfileError):
            lex.process_words(source, env)
    else:
        assert lex.process_words(source, env) == expected


# --- heredocs -------------------------------------------------------------------------

def test_heredoc_content_is_the_lines_up_to_the_delimiter():
    parsed = parse("FROM alpine\nRUN <<EOF\necho one\n  echo two\nEOF\nRUN true\n")
    run = parsed.instructions[1]
    assert run.args == ["<<EOF"]
    assert [(h.name, h.content, h.expand, h.chomp) for h in run.heredocs] == [
        ("EOF", "echo one\n  echo two\n", True, False)]
    assert (run.line, run.end_line) == (2, 5)
    assert parsed.instructions[2].line == 6


def test_heredoc_with_dash_strips_leading_tabs_and_finds_an_indented_delimiter():
    run = parse("FROM a\nRUN <<-EOF\n\techo one\n\t\techo two\n\tEOF\n").instructions[1]
    assert run.heredocs[0].chomp
    assert run.heredocs[0].content == "echo one\necho two\n"


@pytest.mark.parametrize("delimiter", ["'EOF'", '"EOF"', "E'O'F"])
def test_quoted_heredoc_delimiter_turns_expansion_off(delimiter):
    run = parse(f"FROM a\nRUN <<{delimiter}\necho $HOME\nEOF\n").instructions[1]
    assert run.heredocs[0].name == "EOF"
    assert not run.heredocs[0].expand
    assert run.heredocs[0].content == "echo $HOME\n"


def test_two_heredocs_on_one_line_are_read_in_order():
    copy = parse("FROM a\nCOPY <<A <<B /dest/\nfirst\nA\nsecond\nB\n").instructions[1]
    assert copy.args == ["<<A", "<<B", "/dest/"]
    assert [(h.name, h.content) for h in copy.heredocs] == [("A", "first\n"), ("B", "second\n")]


def test_heredoc_with_blanks_after_the_arrows_and_a_file_descriptor():
    parsed = parse("FROM a\nRUN <<  EOF  > /out\nx\nEOF\nRUN 3<<FD cat <&3\ny\nFD\n")
    assert parsed.instructions[1].heredocs[0].name == "EOF"
    assert parsed.instructions[2].heredocs[0].fd == 3


def test_exec_form_and_quoted_arrows_are_not_heredocs():
    parsed = parse('FROM a\nRUN ["<<EOF"]\nRUN echo "<<EOF"\n')
    assert parsed.instructions[1].heredocs == [] and parsed.instructions[1].json
    assert parsed.instructions[2].heredocs == []


def test_onbuild_trigger_keeps_its_heredoc_in_the_stored_expression():
    onbuild = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").instructions[1]
    assert onbuild.args == ["RUN <<EOF\necho hi\nEOF"]
    assert onbuild.trigger.cmd == "run" and onbuild.trigger.heredocs[0].content == "echo hi\n"


def test_unterminated_heredoc_names_its_line():
    with pytest.raises(DockerfileError) as caught:
        parse("FROM a\n\nRUN <<EOF\necho never closed\n")
    assert caught.value.line == 3
    assert str(caught.value).startswith("Dockerfile line 3: unterminated heredoc")


# --- errors ---------------------------------------------------------------------------

def test_unknown_instruction_names_the_line_and_suggests_the_right_one():
    with pytest.raises(DockerfileError) as caught:
        parse("FROM alpine\n\n# a comment\nFORM busybox\n")
    assert str(caught.value) == "Dockerfile line 4: unknown instruction: FORM (did you mean FROM?)"
    assert caught.value.line == 4


def test_from_without_arguments_is_rejected_with_its_line():
    with pytest.raises(DockerfileError) as caught:
        stages(parse("ARG V=1\nFROM\nRUN true\n"))
    assert caught.value.line == 2
    assert "FROM requires either one or three arguments" in str(caught.value)


def test_from_with_two_words_needs_as():
    with pytest.raises(DockerfileError, match="AS is required"):
        stages(parse("FROM alpine named builder\n"))


def test_bad_escape_directive_is_rejected():
    with pytest.raises(DockerfileError) as caught:
        parse("# escape=x\nFROM alpine\n")
    assert caught.value.line == 1
    assert "invalid escape token 'x'" in str(caught.value)


def test_a_directive_may_be_given_once():
    with pytest.raises(DockerfileError, match="only one escape parser directive"):
        parse("# escape=`\n# escape=\\\nFROM alpine\n")


def test_a_directive_after_any_other_line_is_only_a_comment():
    parsed = parse("FROM alpine\n# escape=`\nRUN echo a \\\n  b\n")
    assert parsed.directives == {} and parsed.escape_char == "\\"
    assert parsed.instructions[1].args == ["echo a   b"]


def test_backtick_escape_directive_changes_the_continuation_character():
    parsed = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM alpine\nRUN dir C:\\ `\n  /w\n")
    assert parsed.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert parsed.escape_char == "`"
    assert parsed.instructions[1].args == ["dir C:\\   /w"]


def test_instruction_before_the_first_from_is_rejected():
    with pytest.raises(DockerfileError, match="line 2: RUN before the first FROM"):
        stages(parse("ARG V\nRUN true\nFROM alpine\n"))


def test_stage_checks_catch_unknown_flags_and_missing_destinations():
    with pytest.raises(DockerfileError, match="line 2: unknown flag: user"):
        stages(parse("FROM a\nCOPY --user=me src /dst\n"))
    with pytest.raises(DockerfileError, match="line 2: COPY requires at least two arguments"):
        stages(parse("FROM a\nCOPY src\n"))
    with pytest.raises(DockerfileError, match="FROM isn't allowed as an ONBUILD trigger"):
        stages(parse("FROM a\nONBUILD FROM b\n"))
    with pytest.raises(DockerfileError, match='Unknown type "CONNECT" in HEALTHCHECK'):
        stages(parse("FROM a\nHEALTHCHECK CONNECT TCP 7000\n"))


def test_exec_form_with_a_nested_array_is_rejected_but_invalid_json_is_shell_form():
    with pytest.raises(DockerfileError, match="line 2: CMD: when using JSON array syntax"):
        parse('FROM a\nCMD ["echo", ["x"]]\n')
    cmd = parse("FROM a\nCMD ['echo', 'hi']\n").instructions[1]
    assert (cmd.args, cmd.json) == (["['echo', 'hi']"], False)


# --- instructions and stages ----------------------------------------------------------

def test_continued_instruction_keeps_its_first_line_and_drops_inner_comments():
    parsed = parse("FROM a\n# install\nRUN apt-get update && \\\n# no-op\n    apt-get install x\n")
    run = parsed.instructions[1]
    assert run.original == "RUN apt-get update &&     apt-get install x"
    assert (run.line, run.end_line) == (3, 5)
    assert run.comments == ["install"]


def test_empty_continuation_line_gives_a_warning():
    parsed = parse("FROM a\nRUN echo a \\\n\n  b\n")
    assert parsed.instructions[1].args == ["echo a   b"]
    assert parsed.warnings and "line 2: empty continuation line" in parsed.warnings[0]


def test_env_and_label_pairs_in_both_forms():
    parsed = parse('FROM a\nENV PATH /usr/bin:$PATH\nENV A=1 B="two words"\nLABEL x=y\n')
    env_old, env_new, label = parsed.instructions[1:]
    assert env_pairs(env_old) == [("PATH", "/usr/bin:$PATH")] and env_old.legacy_key_value
    assert env_pairs(env_new) == [("A", "1"), ("B", '"two words"')]
    assert env_new.args == ["A", "1", "B", '"two words"']
    assert label.dump() == 'label "x" "y" "="'


def test_copy_flags_are_separated_from_arguments():
    copy = parse("FROM a\nCOPY --from=builder --chown=1:1 --link /out /app\n").instructions[1]
    assert copy.flags == ["--from=builder", "--chown=1:1", "--link"]
    assert copy.args == ["/out", "/app"]
    assert (copy.flag("from"), copy.flag("link"), copy.flag("chmod")) == ("builder", True, None)


def test_onbuild_is_dumped_with_its_nested_instruction():
    parsed = parse("FROM a\nONBUILD COPY --from=x . /app\nONBUILD RUN [\"make\"]\n")
    assert parsed.dump().splitlines()[1:] == [
        '(onbuild (copy ["--from=x"] "." "/app"))', '(onbuild (run "make"))']
    assert parsed.instructions[2].trigger.json


def test_stages_split_at_from_with_global_args():
    parsed = parse(
        "ARG BASE=alpine:3.19\n"
        "ARG VERSION\n"
        "FROM $BASE AS Builder\n"
        "ARG VERSION\n"
        "RUN make VERSION=$VERSION\n"
        "FROM --platform=linux/amd64 scratch\n"
        "COPY --from=builder /out /app\n"
        "CMD [\"/app\"]\n")
    assert [arg_declarations(a) for a in parsed.global_args] == [
        [("BASE", "alpine:3.19")], [("VERSION", None)]]
    first, second = stages(parsed)
    assert (first.index, first.name, first.base, first.platform) == (0, "builder", "$BASE", None)
    assert [i.cmd for i in first.instructions] == ["arg", "run"]
    assert (second.index, second.name, second.base, second.platform) == (
        1, None, "scratch", "linux/amd64")
    assert [i.cmd for i in second.instructions] == ["copy", "cmd"]
    assert second.from_instruction.line == 6


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(DockerfileError, match='line 2: duplicate stage name "x"'):
        stages(parse("FROM a AS x\nFROM b AS X\n"))


def test_healthcheck_becomes_image_config():
    parsed = parse("FROM a\nHEALTHCHECK --interval=1m30s --timeout=3s --retries=2 "
                   "CMD curl -f http://localhost/\nHEALTHCHECK NONE\n")
    assert healthcheck_config(parsed.instructions[1]) == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/"],
        "Interval": 90_000_000_000, "Timeout": 3_000_000_000, "Retries": 2}
    assert healthcheck_config(parsed.instructions[2]) == {"Test": ["NONE"]}
    assert go_duration_ns("1.5s") == 1_500_000_000


# --- word expansion -------------------------------------------------------------------

def test_expansion_error_says_which_word_and_why():
    with pytest.raises(DockerfileError) as caught:
        ShellLex().process_word("${TAG:?set TAG with --build-arg}", {})
    assert str(caught.value) == (
        'Dockerfile: failed to process "${TAG:?set TAG with --build-arg}": '
        "TAG: set TAG with --build-arg")
    assert "line 4" in str(caught.value.at(4))


def test_expansion_reports_the_variables_a_word_used():
    found = ShellLex().process_word_with_matches("${A:-x}-$B", {"A": "1"})
    assert found.result == "1-"
    assert (found.matched, found.unmatched) == ({"A"}, {"B"})


def test_pattern_removal_and_substitution():
    word = "${P#*/}|${P##*/}|${P%/*}|${P%%/*}|${P/o/0}|${P//o/0}"
    assert ShellLex().process_word(word, {"P": "foo/bar/boo"}) == (
        "bar/boo|boo|foo/bar|foo|f0o/bar/boo|f00/bar/b00")


def test_backtick_escape_character_in_words():
    lex = ShellLex("`")
    assert lex.process_word("C:\\path`$HOME", {"HOME": "/root"}) == "C:\\path$HOME"
    assert lex.process_words('a` b "c d"', {}) == ["a b", "c d"]
