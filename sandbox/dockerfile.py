"""Dockerfiles: the parser, Docker's word rules for ARG/ENV substitution, and build stages.

The parser follows BuildKit's (github.com/moby/buildkit, frontend/dockerfile/parser), the
front end ``docker build`` uses, closely enough that ``parse(text).dump()`` prints the same
s-expressions as BuildKit's ``Node.Dump()``; the conformance data in
``../shared/conformance/dockerfile`` holds us to it byte for byte.

Reading a Dockerfile happens in three layers, as in BuildKit:

1. ``parse`` turns lines into instructions: parser directives at the top (``# escape=``,
   ``# syntax=``, ``# check=``), comments, line continuations, heredocs, flags, and each
   instruction's arguments in JSON (exec) or shell form. It rejects what no Dockerfile may
   contain: an unknown instruction, an unterminated heredoc, a bad directive, ``ENV`` without
   a value, a JSON array holding something other than strings, a file with no instructions.
2. ``stages`` splits the instructions at ``FROM`` into build stages and checks each
   instruction's arguments and flags the way ``docker build`` does before it runs anything
   (``FROM`` takes one or three arguments, ``COPY`` needs a destination, ...).
3. ``ShellLex`` expands ``$VAR`` / ``${VAR:-default}`` and removes quotes in the words of
   ARG, ENV, COPY, WORKDIR and the like, when the builder knows the values.

Arguments stay as written (quotes, ``$VAR``): expansion needs the build's ARG and ENV
values, which only the builder has.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "DockerfileError", "Heredoc", "Instruction", "Parsed", "Stage", "ShellLex", "Expansion",
    "parse", "stages", "check_instruction", "env_pairs", "arg_declarations",
    "healthcheck_config", "go_duration_ns", "go_quote", "INSTRUCTIONS",
]

# Every instruction Docker knows, lower-case.
INSTRUCTIONS = (
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
)

# Go's unicode.IsSpace, which BuildKit uses for trimming and splitting. Python's str.isspace
# also counts the ASCII separators \x1c-\x1f, Go does not.
_SPACE = ("\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
          + "\u2028\u2029\u202f\u205f\u3000")
# BuildKit's reWhitespace: what separates a keyword from its arguments, and list items.
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_GO_REGEX_SPACE = "[\t\n\f\r ]"  # Go's \s
_DIRECTIVE = re.compile(rf"([a-zA-Z][a-zA-Z0-9]*){_GO_REGEX_SPACE}*={_GO_REGEX_SPACE}*"
                        rf"(.+?){_GO_REGEX_SPACE}*\Z")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_WORD = re.compile(rf"([0-9]*)<<(-?){_GO_REGEX_SPACE}*([^<]*)\Z")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")


def _is_space(ch: str) -> bool:
    return ch in _SPACE


def _strip(text: str) -> str:
    return text.strip(_SPACE)


class DockerfileError(ValueError):
    """What is wrong with a Dockerfile, and where: "Dockerfile line 7: unknown instruction: FORM".

    ``reason`` is the message without the location; ``line`` (1-based) and ``end_line`` are
    None when the problem is not on one line (an empty file) or not known yet (a word given
    to ShellLex alone; the builder adds the line with ``at``).
    """

    def __init__(self, reason: str, line: int | None = None, end_line: int | None = None):
        self.reason = reason
        self.line = line
        self.end_line = end_line if end_line is not None else line
        super().__init__(f"Dockerfile: {reason}" if line is None
                         else f"Dockerfile line {line}: {reason}")

    def at(self, line: int, end_line: int | None = None) -> DockerfileError:
        """The same error, located (an error that has a line keeps it)."""
        if self.line is not None:
            return self
        return type(self)(self.reason, line, end_line)


@dataclasses.dataclass
class Heredoc:
    """A here-document: ``RUN <<EOF`` ... ``EOF``.

    ``content`` is the text between the instruction and the terminator, each line with its
    newline; for ``<<-`` (``chomp``) leading tabs are already removed from every line.
    ``expand`` is False when the delimiter was quoted (``<<"EOF"``, ``<<'EOF'``): then
    ``$VAR`` in the content is left alone. ``fd`` is the file descriptor in ``3<<EOF``
    (0 when none was written).
    """
    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclasses.dataclass
class Instruction:
    """One instruction, with its arguments as written (unexpanded).

    ``args`` are BuildKit's node values: the JSON array's elements for exec form, the whole
    rest of the line for shell form (``RUN``, ``CMD``, ``ENTRYPOINT``, ``SHELL``), the
    whitespace-separated words for ``FROM``, ``COPY``, ``ADD``, ``EXPOSE``, ``VOLUME``, one
    string for ``USER``, ``WORKDIR``, ``STOPSIGNAL``, ``MAINTAINER``, the words for ``ARG``
    (``name`` or ``name=default``), ``[key, value, key2, value2, ...]`` for ``ENV`` and
    ``LABEL``, ``[type, command...]`` for ``HEALTHCHECK``. ``ONBUILD`` has the trigger as
    one string in ``args`` (as it is stored in an image's config) and parsed in ``trigger``.
    """
    cmd: str                      # lower-case: "from", "run", ...
    original: str                 # the line as BuildKit keeps it: continuations joined
    line: int                     # first line, 1-based
    end_line: int                 # last line, heredoc terminators included
    flags: list[str]              # ["--from=builder", "--chown=1:1"]
    args: list[str]
    json: bool = False            # exec (JSON) form
    heredocs: list[Heredoc] = dataclasses.field(default_factory=list)
    trigger: Instruction | None = None    # ONBUILD's instruction
    legacy_key_value: bool = False        # ENV/LABEL written "KEY value", not "KEY=value"
    comments: list[str] = dataclasses.field(default_factory=list)  # the comment lines just above

    def flag(self, name: str) -> str | bool | None:
        """The value of ``--name=value`` (the last one given), True for a bare ``--name``,
        None when the flag is absent."""
        found: str | bool | None = None
        for flag in self.flags:
            key, sep, value = flag.removeprefix("--").partition("=")
            if key == name:
                found = value if sep else True
        return found

    def dump(self) -> str:
        """This instruction as BuildKit's Node.Dump() prints it, without the parentheses."""
        text = self.cmd
        if self.flags:
            text += " [" + " ".join(go_quote(f) for f in self.flags) + "]"
        if self.cmd == "onbuild":
            if self.trigger is not None:
                text += " (" + self.trigger.dump() + ")"
            return text
        values = self.args
        if self.cmd in ("env", "label"):
            separator = "" if self.legacy_key_value else "="
            values = [v for i in range(0, len(self.args), 2)
                      for v in (*self.args[i:i + 2], separator)]
        for value in values:
            text += " " + go_quote(value)
        return text


@dataclasses.dataclass
class Parsed:
    """A parsed Dockerfile."""
    directives: dict[str, str]    # parser directives from the top: {"syntax": ..., "escape": "`"}
    escape_char: str              # "\\" or "`"
    instructions: list[Instruction]
    warnings: list[str]

    @property
    def global_args(self) -> list[Instruction]:
        """The ARG instructions before the first FROM: their values can be used in FROM
        lines and, re-declared with ``ARG name``, inside stages."""
        found = []
        for instruction in self.instructions:
            if instruction.cmd == "from":
                break
            if instruction.cmd == "arg":
                found.append(instruction)
        return found

    def dump(self) -> str:
        """The instructions in BuildKit's Dump() format, one ``(...)`` a line, as the
        conformance ``result`` files hold them (ending with a newline)."""
        return "".join(f"({instruction.dump()})\n" for instruction in self.instructions)


# --- Go's strconv.Quote, for the dump -------------------------------------------------

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """``strconv.Quote``: printable characters as they are, the rest escaped. Bytes that
    were not UTF-8 (decoded with surrogateescape) come out as ``\\xNN``, as in Go."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable() and not 0xD800 <= code <= 0xDFFF:
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# --- parser directives -----------------------------------------------------------------

class _Directives:
    """Parser directives are comments of the form ``# key=value`` on the very first lines;
    the first line that is not one (an instruction, a blank line, any other comment) ends
    them, so a later ``# escape=`` is only a comment."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.escape = "\\"
        self.done = False

    def feed(self, line: str) -> bool:
        """Read one line (leading whitespace already removed); True if it was a directive."""
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        match = _DIRECTIVE.match(line[1:].lstrip(_SPACE))
        if not match or match[1].lower() not in _KNOWN_DIRECTIVES:
            self.done = True
            return False
        key, value = match[1].lower(), match[2]
        if key in self.values:
            raise DockerfileError(f"only one {key} parser directive can be used")
        if key == "escape" and value not in ("\\", "`"):
            raise DockerfileError(
                f"invalid escape token '{value}': the escape directive takes a backslash "
                "(# escape=\\) or a backtick (# escape=`)")
        self.values[key] = value
        if key == "escape":
            self.escape = value
        return True


def _is_comment(line: str) -> bool:
    return line.lstrip(_SPACE).startswith("#")


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """Remove a trailing escape character (and the blanks after it): the line goes on.

    An escape preceded by another escape is an escaped escape, not a continuation
    (``ENV C trailing\\\\`` ends the line). Returns the line and whether it ended.
    """
    e = re.escape(escape)
    match = re.search(rf"(?:([^{e}]){e}|\A{e})[ \t]*\Z", line)
    if not match:
        return line, True
    return line[:match.start()] + (match[1] or ""), False


# --- instruction lines ----------------------------------------------------------------

def _split_command(line: str) -> tuple[str, list[str], str]:
    """"COPY --from=a x /y" -> ("COPY", ["--from=a"], "x /y")."""
    parts = _WHITESPACE.split(_strip(line), maxsplit=1)
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1])
    return parts[0], flags, _strip(rest)


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Take the ``--flag`` words from the front of the arguments; ``--`` alone ends them.

    Quotes and backslashes inside a flag word are resolved (``--chown="a b"`` is
    ``--chown=a b``), as BuildKit does.
    """
    words: list[str] = []
    word = ""
    in_word = in_quote = blank_ok = False
    quote = ""
    pos = 0
    while pos <= len(line):
        at_end = pos == len(line)
        ch = "" if at_end else line[pos]
        if not in_word and not in_quote:
            if at_end:
                break
            if _is_space(ch):
                pos += 1
                continue
            if not line.startswith("--", pos):
                return line[pos:], words
            in_word = True
        if at_end:
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if in_quote:
            if ch == quote:
                in_quote = False
            else:
                if ch == "\\":
                    if pos + 1 == len(line):
                        in_quote = False
                        pos += 1
                        continue
                    pos += 1
                    ch = line[pos]
                word += ch
            pos += 1
            continue
        if _is_space(ch):
            in_word = False
            if word == "--":
                return line[pos:], words
            if blank_ok or word:
                words.append(word)
            word, blank_ok = "", False
        elif ch in "'\"":
            quote, blank_ok, in_quote = ch, True, True
        else:
            if ch == "\\":
                if pos + 1 == len(line):
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            word += ch
        pos += 1
    return "", words


def _parse_words(rest: str, escape: str) -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes in the words (they are
    removed later, when the words are expanded)."""
    words: list[str] = []
    word = ""
    quote = ""
    blank_ok = False
    pos = 0
    while pos < len(rest):
        ch = rest[pos]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":   # nothing escapes inside '...'
                if pos + 1 == len(rest):
                    break
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        elif _is_space(ch):
            if blank_ok or word:
                words.append(word)
            word, blank_ok = "", False
        else:
            if ch in "'\"":
                quote, blank_ok = ch, True
            if ch == escape:
                if pos + 1 == len(rest):
                    break
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
        pos += 1
    if blank_ok or word:
        words.append(word)
    return words


class _NotStringArray(Exception):
    pass


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")     # Go's decoder has no NaN or Infinity


def _parse_json(rest: str) -> list[str] | None:
    """The elements of a JSON array of strings; None if ``rest`` is not a JSON array."""
    rest = rest.lstrip(_SPACE)
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _NotStringArray()
    # Go's decoder turns invalid UTF-8 and lone surrogates into U+FFFD.
    return [re.sub("[\ud800-\udfff]", "\ufffd", item) for item in value]


def _maybe_json(cmd: str, rest: str) -> tuple[list[str], bool]:
    """Exec form if ``rest`` is a JSON array of strings, else shell form: the whole rest.
    Invalid JSON (single quotes, an unclosed bracket) is shell form, as in Docker."""
    if not rest:
        return [], False
    try:
        values = _parse_json(rest)
    except _NotStringArray:
        raise DockerfileError(
            f"{cmd.upper()}: when using JSON array syntax (exec form), every element must be "
            f"a string: {rest}") from None
    if values is None:
        return [rest], False
    return values, True


def _maybe_json_list(cmd: str, rest: str) -> tuple[list[str], bool]:
    values, is_json = _maybe_json(cmd, rest)
    if is_json or not rest:
        return values, is_json
    return _WHITESPACE.split(rest), False


def _key_values(cmd: str, rest: str, escape: str) -> tuple[list[str], bool]:
    """ENV/LABEL: ``KEY value`` (the old form: one pair, the value is the rest of the line)
    or ``KEY=value KEY2="value 2"``. Returns [key, value, ...] and whether it was the old form."""
    words = _parse_words(rest, escape)
    if not words:
        return [], False
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(
                f"{cmd.upper()} must have two arguments: {cmd.upper()} {rest} has a name but no "
                f"value (write {cmd.upper()} {rest}=value)")
        return parts, True
    values: list[str] = []
    for word in words:
        if "=" not in word:
            raise DockerfileError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value")
        values += word.split("=", 1)
    return values, False


def _healthcheck_args(rest: str) -> tuple[list[str], bool]:
    """``HEALTHCHECK CMD ...``: the type word, then the command as for CMD."""
    if not rest:
        return [], False
    sep = next((i for i, ch in enumerate(rest) if _is_space(ch)), len(rest))
    command = rest[sep:].lstrip(_SPACE)
    values, is_json = _maybe_json("healthcheck", command)
    return [rest[:sep], *values], is_json


def _parse_instruction(line: str, escape: str) -> Instruction:
    """One logical line (continuations joined) -> Instruction, without line numbers."""
    keyword, flags, rest = _split_command(line)
    cmd = keyword.lower()
    if cmd not in INSTRUCTIONS:
        raise DockerfileError(_unknown_instruction(keyword))
    instruction = Instruction(cmd=cmd, original=line, line=0, end_line=0, flags=flags, args=[])
    if cmd in ("run", "cmd", "entrypoint", "shell"):
        instruction.args, instruction.json = _maybe_json(cmd, rest)
    elif cmd in ("add", "copy", "volume"):
        instruction.args, instruction.json = _maybe_json_list(cmd, rest)
    elif cmd in ("from", "expose"):
        instruction.args = _WHITESPACE.split(rest) if rest else []
    elif cmd in ("env", "label"):
        instruction.args, instruction.legacy_key_value = _key_values(cmd, rest, escape)
    elif cmd == "arg":
        instruction.args = _parse_words(rest, escape)
    elif cmd == "healthcheck":
        instruction.args, instruction.json = _healthcheck_args(rest)
    elif cmd == "onbuild":
        if rest:
            instruction.trigger = _parse_instruction(rest, escape)
            instruction.args = [_onbuild_expression(line)]
    else:   # maintainer, stopsignal, user, workdir: the rest of the line, one string
        instruction.args = [rest] if rest else []
    return instruction


def _unknown_instruction(keyword: str) -> str:
    if not keyword:
        return "expected an instruction, found only a line continuation"
    message = f"unknown instruction: {keyword.upper()}"
    close = difflib.get_close_matches(keyword.lower(), INSTRUCTIONS, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0].upper()}?)"
    return message


def _onbuild_expression(original: str) -> str:
    return re.sub(rf"(?i)\A{_GO_REGEX_SPACE}*ONBUILD{_GO_REGEX_SPACE}*", "", original)


# --- heredocs -------------------------------------------------------------------------

def _can_contain_heredoc(instruction: Instruction) -> bool:
    if instruction.cmd == "onbuild" and instruction.trigger is not None:
        instruction = instruction.trigger
    return instruction.cmd in ("run", "copy", "add") and not instruction.json


def _heredocs_from_line(line: str) -> list[Heredoc]:
    """The ``<<NAME`` words of a line, in order. Words are found with the shell lexer
    keeping quotes and escapes, so ``<<"EOF"`` can be told from ``<<EOF``."""
    lex = ShellLex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line, {})
    except DockerfileError:
        return []
    found = []
    for word in words:
        match = _HEREDOC_WORD.match(word)
        heredoc = _heredoc_from_match(match) if match else None
        if heredoc is not None:
            found.append(heredoc)
    return found


def _heredoc_from_match(match: re.Match) -> Heredoc | None:
    fd, chomp, rest = match[1], match[2] == "-", match[3]
    if not rest:
        return None
    lex = ShellLex("\\", skip_unset_env=True)
    words = lex.process_words(rest, {})
    if len(words) != 1:
        return None
    lex.raw_quotes = True
    raw_words = lex.process_words(rest, {})
    if len(raw_words) != 1:
        raise DockerfileError(f"internal lexing of heredoc produced inconsistent results: {rest}")

    def quotes(text: str) -> int:
        return text.count("'") + text.count('"')

    # Quotes anywhere in the delimiter word turn expansion off, as in a shell.
    return Heredoc(name=words[0], content="", expand=quotes(words[0]) == quotes(raw_words[0]),
                   chomp=chomp, fd=int(fd or 0))


# --- the parser -----------------------------------------------------------------------

def _split_lines(text: str) -> list[str]:
    """Lines with their endings; only \\n ends a line, as in BuildKit's scanner."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse(text: str | bytes) -> Parsed:
    """Parse a Dockerfile. Raises DockerfileError naming the line of the first problem."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    lines = _split_lines(text)
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    directives = _Directives()
    instructions: list[Instruction] = []
    warnings: list[str] = []
    comments: list[str] = []
    number = 0          # lines read so far = the number of the current line

    def next_line() -> str:
        nonlocal number
        number += 1
        return lines[number - 1]

    while number < len(lines):
        raw = next_line()
        start = number
        content = raw.rstrip("\r\n").lstrip(_SPACE)
        if content.startswith("#"):
            comment = content[1:].strip(_SPACE)
            comments = comments + [comment] if comment else []
        try:
            if directives.feed(content):
                comments = comments[:-1]
        except DockerfileError as err:
            raise err.at(number) from None
        if content.startswith("#"):
            content = ""
        line, ended = _trim_continuation(content, directives.escape)
        if ended and not line:
            continue

        parts = [line]
        empty_continuation = False
        while not ended and number < len(lines):
            raw = next_line()
            if _is_comment(raw):
                continue            # comments inside a continued instruction are dropped
            content = raw.rstrip("\r\n")
            if not content.strip(_SPACE):
                empty_continuation = True
                continue
            content, ended = _trim_continuation(content, directives.escape)
            parts.append(content)
        line = "".join(parts)
        if empty_continuation:
            warnings.append(f"line {start}: empty continuation line found in: {line} "
                            "(empty continuation lines will become errors in a future release)")

        try:
            instruction = _parse_instruction(line, directives.escape)
        except DockerfileError as err:
            raise err.at(start, number) from None
        instruction.comments = comments
        comments = []

        if "<<" in line and _can_contain_heredoc(instruction):
            try:
                heredocs = _heredocs_from_line(line)
            except DockerfileError as err:
                raise err.at(start, number) from None
            for heredoc in heredocs:
                body = []
                while number < len(lines):
                    raw = next_line()
                    candidate = raw.rstrip("\r\n")
                    if heredoc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == heredoc.name:
                        break
                    body.append(raw)
                else:
                    raise DockerfileError(
                        f"unterminated heredoc: {heredoc.name} in {_strip(line)} is never "
                        f"closed; end it with a line reading exactly {heredoc.name}",
                        start, number)
                raw_content = "".join(body)
                if instruction.cmd == "onbuild":
                    # The trigger is stored as text in the image, so it carries its heredocs.
                    instruction.args[0] += "\n" + raw_content + heredoc.name
                heredoc.content = (_LEADING_TABS.sub("", raw_content) if heredoc.chomp
                                   else raw_content)
                instruction.heredocs.append(heredoc)
            if instruction.trigger is not None:
                instruction.trigger.heredocs = instruction.heredocs

        instruction.line, instruction.end_line = start, number
        if instruction.trigger is not None:
            instruction.trigger.line, instruction.trigger.end_line = start, number
        if instruction.cmd == "maintainer":
            warnings.append(f"line {start}: MAINTAINER is deprecated, "
                            "use LABEL org.opencontainers.image.authors=... instead")
        instructions.append(instruction)

    if not instructions:
        raise DockerfileError("file with no instructions: a Dockerfile needs at least a FROM "
                              "line (blank lines and comments do not count)")
    return Parsed(directives=dict(directives.values), escape_char=directives.escape,
                  instructions=instructions, warnings=warnings)


# --- build stages ---------------------------------------------------------------------

@dataclasses.dataclass
class Stage:
    """A build stage: a FROM line and the instructions up to the next FROM."""
    index: int
    name: str | None              # the AS name, lower-case
    base: str                     # the image reference as written (may hold $ARGs)
    platform: str | None          # --platform, as written
    from_instruction: Instruction
    instructions: list[Instruction]


def stages(parsed: Parsed) -> list[Stage]:
    """Split the instructions into build stages, checking every instruction's arguments
    and flags as ``docker build`` does before it runs anything. The ARGs before the first
    FROM are ``parsed.global_args``."""
    found: list[Stage] = []
    names: dict[str, int] = {}
    for instruction in parsed.instructions:
        check_instruction(instruction)
        if instruction.cmd == "from":
            base = instruction.args[0]
            name = instruction.args[2].lower() if len(instruction.args) == 3 else None
            if name is not None:
                if name in names:
                    raise DockerfileError(
                        f"duplicate stage name {go_quote(name)}: it already names the stage "
                        f"on line {names[name]}", instruction.line)
                names[name] = instruction.line
            platform = instruction.flag("platform")
            found.append(Stage(index=len(found), name=name, base=base,
                               platform=platform if isinstance(platform, str) else None,
                               from_instruction=instruction, instructions=[]))
        elif found:
            found[-1].instructions.append(instruction)
        elif instruction.cmd != "arg":
            raise DockerfileError(
                f"{instruction.cmd.upper()} before the first FROM: only ARG may come before "
                "FROM; every other instruction belongs to a build stage", instruction.line)
    if not found:
        raise DockerfileError("no FROM instruction: a Dockerfile needs at least one build "
                              "stage, started by FROM")
    return found


# Flags each instruction accepts: name -> takes a value (True) or is a switch (False).
_FLAGS: dict[str, dict[str, bool]] = {
    "from": {"platform": True},
    "run": {"mount": True, "network": True, "security": True},
    "copy": {"from": True, "chown": True, "chmod": True, "link": False, "parents": False,
             "exclude": True},
    "add": {"chown": True, "chmod": True, "link": False, "keep-git-dir": False,
            "checksum": True, "exclude": True, "unpack": False},
    "healthcheck": {"interval": True, "timeout": True, "start-period": True,
                    "start-interval": True, "retries": True},
}


def check_instruction(instruction: Instruction) -> None:
    """Raise DockerfileError if the instruction's arguments or flags are not valid."""
    try:
        _check(instruction)
    except DockerfileError as err:
        raise err.at(instruction.line, instruction.end_line) from None


def _check(instruction: Instruction) -> None:
    cmd, args, name = instruction.cmd, instruction.args, instruction.cmd.upper()
    _check_flags(instruction)
    if cmd == "from":
        if len(args) == 3:
            if args[1].lower() != "as":
                raise DockerfileError(
                    f"FROM {' '.join(args)}: AS is required to name a stage (FROM image AS name)")
            if not _STAGE_NAME.match(args[2].lower()):
                raise DockerfileError(
                    f"invalid name for build stage: {go_quote(args[2])}, name can't start "
                    "with a number or contain symbols")
        elif len(args) != 1:
            raise DockerfileError("FROM requires either one or three arguments: "
                                  "FROM image, or FROM image AS name")
    elif cmd in ("env", "label", "arg", "expose", "volume", "run", "maintainer", "user",
                 "workdir", "stopsignal", "onbuild"):
        if not args:
            raise DockerfileError(f"{name} requires at least one argument")
        if cmd in ("env", "label") and any(not key for key in args[::2]):
            raise DockerfileError(f"{name} names can not be blank")
        if cmd == "arg" and any(not word.split("=", 1)[0] for word in args):
            raise DockerfileError("ARG names can not be blank")
        if cmd == "volume" and any(not _strip(v) for v in args):
            raise DockerfileError("VOLUME specified can not be an empty string")
    elif cmd in ("copy", "add"):
        if len(args) < 2:
            raise DockerfileError(
                f"{name} requires at least two arguments, but only {len(args) or 'none'} "
                f"{'was' if len(args) == 1 else 'were'} provided: the last argument is the "
                "destination")
    elif cmd == "shell":
        if not instruction.json:
            raise DockerfileError('SHELL requires the arguments to be in JSON form, '
                                  'e.g. SHELL ["/bin/sh", "-c"]')
        if not args:
            raise DockerfileError("SHELL requires at least one argument")
    elif cmd == "healthcheck":
        healthcheck_config(instruction)
    if cmd == "onbuild":
        trigger = instruction.trigger
        assert trigger is not None
        if trigger.cmd in ("onbuild", "from", "maintainer"):
            raise DockerfileError(
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed" if trigger.cmd == "onbuild"
                else f"{trigger.cmd.upper()} isn't allowed as an ONBUILD trigger")
        _check(trigger)


def _check_flags(instruction: Instruction) -> None:
    allowed = _FLAGS.get(instruction.cmd, {})
    for flag in instruction.flags:
        key, sep, value = flag.removeprefix("--").partition("=")
        if key not in allowed:
            raise DockerfileError(f"unknown flag: {key} ({instruction.cmd.upper()} takes "
                                  + (", ".join("--" + f for f in allowed) or "no flags") + ")")
        if allowed[key] and not sep:
            raise DockerfileError(f"missing a value on flag: {key} (write --{key}=value)")
        if not allowed[key] and sep and value.lower() not in ("true", "false"):
            raise DockerfileError(f"expecting boolean value for flag {key}, not: {value}")


def env_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """ENV/LABEL as (key, value) pairs, values as written (quotes and $VARs unexpanded)."""
    return list(zip(instruction.args[::2], instruction.args[1::2]))


def arg_declarations(instruction: Instruction) -> list[tuple[str, str | None]]:
    """ARG as (name, default) pairs; default None for ``ARG name``, as written otherwise."""
    declarations: list[tuple[str, str | None]] = []
    for word in instruction.args:
        name, sep, default = word.partition("=")
        declarations.append((name, default if sep else None))
    return declarations


_DURATION = re.compile(r"([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def go_duration_ns(text: str) -> int:
    """A Go duration ("1m30s", "500ms", "0") in nanoseconds."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION.match(body, pos)
        if not match or match[1] in ("", "."):
            raise DockerfileError(f"time: invalid duration {go_quote(text)} "
                                  "(write it like 30s, 1m30s or 500ms)")
        total += float(match[1]) * _DURATION_NS[match[2]]
        pos = match.end()
    if not body:
        raise DockerfileError(f"time: invalid duration {go_quote(text)}")
    return sign * round(total)


def healthcheck_config(instruction: Instruction) -> dict:
    """HEALTHCHECK as an image config's ``Healthcheck`` (durations in nanoseconds)."""
    args = instruction.args
    if not args:
        raise DockerfileError("HEALTHCHECK requires an argument: HEALTHCHECK NONE, or "
                              "HEALTHCHECK [options] CMD command")
    kind = args[0].upper()
    if kind == "NONE":
        if len(args) > 1 or instruction.flags:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise DockerfileError(f"Unknown type {go_quote(args[0])} in HEALTHCHECK (try CMD)")
    if len(args) < 2:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    config: dict = {"Test": ["CMD" if instruction.json else "CMD-SHELL", *args[1:]]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        value = instruction.flag(flag)
        if isinstance(value, str) and value:
            ns = go_duration_ns(value)
            if ns < 0 or 0 < ns < 1_000_000:
                raise DockerfileError(f'Interval "{flag}" cannot be less than 1ms')
            if ns:
                config[key] = ns
    retries = instruction.flag("retries")
    if isinstance(retries, str) and retries:
        if not re.fullmatch(r"[-+]?[0-9]+", retries):
            raise DockerfileError(f"--retries takes a whole number, not {go_quote(retries)}")
        if int(retries) < 0:
            raise DockerfileError(f"--retries cannot be negative ({int(retries)})")
        if int(retries):
            config["Retries"] = int(retries)
    return config


# --- shell words ----------------------------------------------------------------------

@dataclasses.dataclass
class Expansion:
    """A word after expansion, and which variables it used (matched) or missed (unmatched):
    a build step's cache key depends only on the variables it used."""
    result: str
    words: list[str]
    matched: set[str]
    unmatched: set[str]


class ShellLex:
    """Docker's word rules, as BuildKit's shell lexer applies them to ARG/ENV/COPY/... words.

    ``$VAR`` and ``${VAR}``; ``${VAR:-word}`` / ``${VAR-word}`` (default if unset or empty /
    unset), ``${VAR:+word}`` / ``${VAR+word}`` (alternative if set and not empty / set),
    ``${VAR:?message}`` / ``${VAR?message}`` (error), ``${VAR#pattern}``, ``##``, ``%``,
    ``%%`` (remove prefix/suffix), ``${VAR/pattern/replacement}`` and ``//``. Single quotes
    keep everything literal; double quotes keep all but ``$`` and the escapes of ``"``,
    ``$`` and the escape character; outside quotes the escape character makes the next
    character literal. Positional and special parameters (``$1``, ``$@``, ``$$``...) are
    never set. There is no command substitution and no globbing.

    The options are BuildKit's, used by the parser to find heredoc delimiters:
    ``raw_quotes`` keeps quote characters in the result, ``raw_escapes`` keeps escape
    characters, ``skip_unset_env`` leaves references to unset variables as written.
    """

    def __init__(self, escape: str = "\\", *, raw_quotes: bool = False,
                 raw_escapes: bool = False, skip_unset_env: bool = False,
                 skip_process_quotes: bool = False):
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset_env = skip_unset_env
        self.skip_process_quotes = skip_process_quotes

    def process_word(self, word: str, env: Mapping[str, str] | Iterable[str]) -> str:
        """Expand one word; spaces inside it are kept."""
        return self.process_word_with_matches(word, env).result

    def process_words(self, word: str, env: Mapping[str, str] | Iterable[str]) -> list[str]:
        """Expand, then split into words on blanks outside quotes (blanks that came from a
        variable's value split too, as in a shell)."""
        return self.process_word_with_matches(word, env).words

    def process_word_with_matches(self, word: str,
                                  env: Mapping[str, str] | Iterable[str]) -> Expansion:
        scan = _ShellWord(self, word, _environment(env))
        try:
            result, words = scan.process_stop_on(None, self.raw_escapes)
        except _LexError as err:
            raise DockerfileError(f"failed to process {go_quote(word)}: {err}") from None
        return Expansion(result, words, scan.matched, scan.unmatched)


def _environment(env: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    if isinstance(env, Mapping):
        return dict(env)
    found = {}
    for entry in env:
        key, _, value = entry.partition("=")
        found[key] = value
    return found


class _LexError(Exception):
    pass


class _Words:
    """Collects the words of a line as BuildKit does: blanks that were quoted or escaped
    are part of a word, others separate words."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if not _is_space(ch):
            self.add_raw(ch)
        elif self.in_word and self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _ShellWord:
    """One pass of the lexer over one word."""

    def __init__(self, lex: ShellLex, text: str, env: dict[str, str]):
        self.lex = lex
        self.text = text
        self.pos = 0
        self.env = env
        self.raw_escapes = lex.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def next(self) -> str | None:
        ch = self.peek()
        if ch is not None:
            self.pos += 1
        return ch

    def process_stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Read up to ``stop`` (consumed) or the end; returns the text and its words."""
        result: list[str] = []
        words = _Words()
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            while (ch := self.peek()) is not None:
                if stop is not None and ch == stop:
                    self.next()
                    return "".join(result), words.result()
                if ch == "$":
                    value = self.dollar()
                    result.append(value)
                    words.add_string(value)
                elif ch == "<":
                    value = self.possible_heredoc()
                    result.append(value)
                    words.add_raw(value)
                elif ch in "'\"" and not self.lex.skip_process_quotes:
                    value = self.single_quote() if ch == "'" else self.double_quote()
                    result.append(value)
                    words.add_raw(value)
                else:
                    ch = self.next()
                    if ch == self.lex.escape:
                        if self.raw_escapes:
                            words.add_raw(ch)
                            result.append(ch)
                        ch = self.next()
                        if ch is None:
                            break           # an escape at the very end is dropped
                        words.add_raw(ch)
                    else:
                        words.add_char(ch)
                    result.append(ch)
        finally:
            self.raw_escapes = saved
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def single_quote(self) -> str:
        opening = self.next()
        result = [opening] if self.lex.raw_quotes else []
        while True:
            ch = self.next()
            if ch is None:
                raise _LexError("unexpected end of statement while looking for matching "
                                "single-quote")
            if ch == "'":
                if self.lex.raw_quotes:
                    result.append(ch)
                return "".join(result)
            result.append(ch)

    def double_quote(self) -> str:
        opening = self.next()
        result = [opening] if self.lex.raw_quotes else []
        while True:
            ch = self.peek()
            if ch is None:
                raise _LexError("unexpected end of statement while looking for matching "
                                "double-quote")
            if ch == '"':
                self.next()
                if self.lex.raw_quotes:
                    result.append(ch)
                return "".join(result)
            if ch == "$":
                result.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.peek()
                if following is None:
                    continue        # then the missing quote is reported
                if following in ('"', "$", self.lex.escape):
                    ch = self.next()
            result.append(ch)

    def possible_heredoc(self) -> str:
        """``<<`` keeps the blanks after it in its word, so ``<<  EOF`` is one word."""
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        blanks = ""
        while (ch := self.peek()) is not None and ch in " \t\r\n":
            blanks += self.next()
        return "<<" + blanks

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False

    def name(self) -> str:
        """A variable name: letters, digits and _; or a run of digits (positional
        parameters); or one special parameter character."""
        name = ""
        while (ch := self.peek()) is not None:
            if not name and ch.isdecimal():
                while (ch := self.peek()) is not None and ch.isdecimal():
                    name += self.next()
                return name
            if not name and ch in "@*#?-$!0":
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name += self.next()
        return name

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset_env:
                return "$" + name
            return value

        self.next()
        following = self.peek()
        if following is None:
            raise _LexError("syntax error: missing '}'")
        if following in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch is None:
            raise _LexError("syntax error: missing '}'")
        modifier = ch
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lex.skip_unset_env:
                return "${%s}" % name
            return value

        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            if ch is None:
                raise _LexError("syntax error: missing '}'")
            modifier += ch
        elif ch == "/":
            return self.substitute(name)
        elif ch not in "+-?#%":
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")

        pattern_like = ch in "#%"
        if null_is_unset and pattern_like:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.process_stop_on("}", pattern_like)
        except _LexError:
            if self.peek() is None:
                raise _LexError("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if not found and self.lex.skip_unset_env:
            return "${%s%s%s}" % (name, modifier, word)
        unset = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if not found:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in "#%":
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def substitute(self, name: str) -> str:
        """``${name/pattern/replacement}``, ``${name//pattern/replacement}`` for all."""
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except _LexError:
            if self.peek() is None:
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except _LexError:
            if self.peek() is None:
                raise _LexError("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if not found and self.lex.skip_unset_env:
            return "${%s/%s/%s}" % (name, pattern, replacement)
        regex = _shell_pattern(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)


def _shell_pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern:
    """A shell wildcard pattern (``*``, ``?``, ``\\`` escapes; no brackets) as a regex."""
    out = ["^"] if anchored else []
    pos = 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if pos < len(pattern) and pattern[pos] in "}/":
                continue    # escaped to get through ${...}; not part of the pattern
            escaped = pattern[pos] if pos < len(pattern) else ""
            pos += 1
            if escaped not in ("*", "?", "\\"):
                raise _LexError(f"invalid pattern ({pattern}) in substitution: "
                                f"invalid escape '\\{escaped}'")
            out.append(re.escape(escaped))
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _shell_pattern(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern keeping each escape before the character it escapes."""
    tokens, pos = [], 0
    while pos < len(pattern):
        step = 2 if pattern[pos] == "\\" and pos + 1 < len(pattern) else 1
        tokens.append(pattern[pos:pos + step])
        pos += step
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex finds the leftmost match, not the shortest rightmost one: reverse both.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]
