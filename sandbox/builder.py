"""Dockerfile → image: each instruction a layer or a config-only step.

The output is Docker's classic builder's (``Step 2/5 : RUN …``, `` ---> Using
cache``, `` ---> Running in …``, ``Successfully built …``), and every step is
an event (``build.step``, ``build.cache_hit``, ``layer.created``), after a
``build.started`` that carries the Dockerfile for the page to show, and
before ``build.done`` (or ``build.failed``).

The cache is keyed as BuildKit keys it. Each step's key is the key of the
execution state before it (base image, layers, ENV, ARG, WORKDIR, USER,
SHELL) plus the step's own definition, and for COPY/ADD a checksum of the
content of the files it copies (never their mtimes). Steps that only change
image metadata (CMD, LABEL, EXPOSE, …) don't move the execution state, so
changing them invalidates nothing after them. A cache entry keeps the layer
and the history entry the step made, so a fully cached rebuild gives the
very same image id.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from sandbox import dockerfile as df
from sandbox import linux
from sandbox.archive import extract_layer
from sandbox.commit import write_upper_as_layer
from sandbox.images import Image, canonical_json, chain_ids, check_reference, rfc3339
from sandbox.runtime import ContainerConfig

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Build args Docker accepts without an ARG line (proxies).
BUILTIN_ARGS = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}
METADATA_ONLY = {"cmd", "entrypoint", "label", "expose", "volume", "stopsignal", "healthcheck",
                 "onbuild", "maintainer"}
DOCKERFILE_SHOWN = 64 << 10   # bytes of the Dockerfile a build.started event carries
STEP_SHOWN = 4 << 10          # characters of one instruction it carries
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BuildError(Exception):
    """A build failed; the message says which step and why."""


@dataclasses.dataclass
class BuildOptions:
    tags: list[str] = dataclasses.field(default_factory=list)
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = dataclasses.field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    labels: dict[str, str] = dataclasses.field(default_factory=dict)  # --label: a last LABEL step
    memory: int | None = None      # limits of every RUN container
    pids_limit: int | None = None
    timeout: float | None = 600


@dataclasses.dataclass
class StageState:
    """Where a stage is: its image so far and the execution state's cache key."""
    config: dict                   # the image config being built
    layers: list[dict]             # layer descriptors, lowest first
    key: str                       # cache key of the execution state
    args: dict[str, str]           # ARGs in scope (not persisted in the image)
    name: str | None = None
    triggers: list = dataclasses.field(default_factory=list)  # ONBUILD of the base, to run now

    @property
    def run_config(self) -> dict:
        return self.config.setdefault("config", {})

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.run_config.get("Env") or [] if "=" in item)


class Builder:
    def __init__(self, engine):
        self.engine = engine
        self.store = engine.images
        self.cache_path = self.store.oci / "build-cache.json"

    # ------------------------------------------------------------------ the build

    def build(self, context: Path, options: BuildOptions, out: Callable[[str], None]) -> Image:
        """Builds ``context`` (a directory) with ``options``; ``out`` gets the log lines."""
        self.announced = False
        try:
            return self._build(context, options, out)
        except Exception as exc:
            # A build the page saw start must be seen to stop, or its step spins forever.
            if self.announced:
                self.emit("build.failed", step=self.step, error=str(exc)[:1000])
            raise

    def _build(self, context: Path, options: BuildOptions, out: Callable[[str], None]) -> Image:
        started = time.monotonic()
        build_id = hashlib.sha256(os.urandom(16)).hexdigest()[:12]
        self.out = out
        self.options = options
        self.build_id = build_id
        for tag in options.tags:
            check_reference(tag)
        text = read_dockerfile(context, options.dockerfile)
        try:
            parsed = df.parse(text)
            stage_list = df.stages(parsed)
        except df.DockerfileError as exc:
            raise BuildError(f"{options.dockerfile}: {exc}") from None
        ignore = DockerIgnore.load(context)
        self.context = context
        self.ignore = ignore
        self.cache = self._load_cache()
        self.used_args: set[str] = set()
        self.lex = df.ShellLex(parsed.escape_char)
        global_args = self._global_args(parsed.global_args)
        targets = self._stages_to_build(stage_list, options.target)
        total = sum(1 + len(s.instructions) for s in targets)
        self.step = 0
        self.total = total
        self._emit_started(text, targets)
        built: dict[str, StageState] = {}
        state = None
        for stage in targets:
            state = self._from(stage, global_args, built)
            for instruction in state.triggers:
                state = self._step(instruction, state, built)
            for instruction in stage.instructions:
                state = self._step(instruction, state, built)
            built[str(stage.index)] = state
            if stage.name:
                built[stage.name] = state
        if options.labels and state is not None:
            # As Docker's classic builder: the labels are one more (config-only) step.
            labels = dict(state.run_config.get("Labels") or {})
            labels.update(options.labels)
            state.run_config["Labels"] = labels
            pairs = " ".join(f'"{k}"="{v}"' for k, v in sorted(options.labels.items()))
            self._metadata(state, None, f"LABEL {pairs}")
        unused = sorted(set(options.build_args) - self.used_args - BUILTIN_ARGS)
        if unused:
            out(f"[Warning] One or more build-args {unused} were not consumed\n")
        assert state is not None
        image = self.store.put_image(state.config, state.layers,
                                     options.tags[0] if options.tags else None, keep=True)
        for tag in options.tags[1:]:
            self.store.tag(image.id, tag)
        # The image and the real entries refer to the layers now.
        self.cache = {k: v for k, v in self.cache.items() if not k.startswith("pending:")}
        self._save_cache()
        short = image.id.removeprefix("sha256:")[:12]
        out(f"Successfully built {short}\n")
        for tag in options.tags:
            out(f"Successfully tagged {check_reference(tag)}\n")
        self.emit("build.done", image=image.id, tags=[check_reference(t) for t in options.tags],
                  steps=total, seconds=round(time.monotonic() - started, 3))
        return image

    def emit(self, kind: str, **detail) -> None:
        self.engine.bus.emit(kind, {"build": self.build_id}, detail, host=self.engine.host)

    def _emit_started(self, text: str, targets: list[df.Stage]) -> None:
        """The Dockerfile and its steps, numbered as the ``build.step`` events will number
        them (ONBUILD triggers of a base, known only at its FROM, come in between)."""
        instructions = [i for stage in targets for i in (stage.from_instruction, *stage.instructions)]
        data = text.encode()
        self.emit("build.started", dockerfile=data[:DOCKERFILE_SHOWN].decode("utf-8", "ignore"),
                  truncated=len(data) > DOCKERFILE_SHOWN, file=self.options.dockerfile,
                  tags=list(self.options.tags), total=self.total,
                  steps=[{"index": n, "instruction": i.cmd.upper(),
                          "original": i.original.strip()[:STEP_SHOWN],
                          "line": i.line, "end_line": i.end_line}
                         for n, i in enumerate(instructions, start=1)])
        self.announced = True

    def _stages_to_build(self, stage_list: list[df.Stage], target: str | None) -> list[df.Stage]:
        if target is None:
            return stage_list
        for stage in stage_list:
            if stage.name == target.lower():
                return stage_list[:stage.index + 1]
        raise BuildError(f"target stage {target!r} could not be found "
                         f"(stages: {', '.join(s.name or str(s.index) for s in stage_list)})")

    def _global_args(self, declarations: list[df.Instruction]) -> dict[str, str]:
        args: dict[str, str] = {}
        for instruction in declarations:
            for name, default in df.arg_declarations(instruction):
                if name in self.options.build_args:
                    args[name] = self.options.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    args[name] = self._expand(default, args, instruction)
        self.global_args = args
        return args

    # ------------------------------------------------------------------ FROM

    def _from(self, stage: df.Stage, global_args: dict[str, str], built: dict) -> StageState:
        self._announce(stage.from_instruction)
        base = self._expand(stage.base, global_args, stage.from_instruction)
        for name in global_args:
            if f"${name}" in stage.base or f"${{{name}" in stage.base:
                self.used_args.add(name)
        if base.lower() in built:
            parent = built[base.lower()]
            state = StageState(json.loads(json.dumps(parent.config)), list(parent.layers),
                               parent.key, {}, stage.name)
            self._emit_id(state)
            return state
        if base == "scratch":
            config = {"architecture": self.store.get("scratch").config.get("architecture", "amd64"),
                      "os": "linux", "config": {"Env": [DEFAULT_PATH]},
                      "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            state = StageState(config, [], sha("from", "scratch"), {}, stage.name)
            self._emit_id(state)
            return state
        try:
            image = self.store.get(base)
        except LookupError:
            raise BuildError(f"Step {self.step}/{self.total} : FROM {base}: image {base!r} is not "
                             "in this Docker host's image cache (no registry is reachable from "
                             "the build; pull or build it first)") from None
        config = json.loads(json.dumps(image.config))
        config.pop("container", None)
        state = StageState(config, list(image.manifest["layers"]), sha("from", image.id), {}, stage.name)
        triggers = (config.get("config") or {}).pop("OnBuild", None) or []
        if triggers:
            self.out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            parsed = []
            for trigger in triggers:
                try:
                    parsed += df.parse(trigger).instructions
                except df.DockerfileError as exc:
                    raise BuildError(f"ONBUILD trigger {trigger!r} of {base}: {exc}") from None
            state.triggers = parsed
            self.total += len(parsed)
        self._emit_id(state)
        return state

    # ------------------------------------------------------------------ one step

    def _announce(self, instruction: df.Instruction) -> None:
        self.step += 1
        text = instruction.original.strip()
        self.out(f"Step {self.step}/{self.total} : {text}\n")
        self.emit("build.step", step=self.step, total=self.total, instruction=text,
                  line=instruction.line)

    def _emit_id(self, state: StageState) -> None:
        self.out(f" ---> {config_id(state.config)[:12]}\n")

    def _step(self, instruction: df.Instruction, state: StageState, built: dict) -> StageState:
        self._announce(instruction)
        cmd = instruction.cmd
        try:
            handler = getattr(self, f"_do_{cmd}")
        except AttributeError:
            raise BuildError(f"Step {self.step}/{self.total} : {cmd.upper()} is not supported") from None
        try:
            handler(instruction, state, built)
        except df.DockerfileError as exc:
            raise BuildError(f"{self.options.dockerfile} line {instruction.line}: {exc.reason}") from None
        self._emit_id(state)
        return state

    @staticmethod
    def _history(created_by: str, empty: bool) -> dict:
        entry = {"created": rfc3339(time.time()), "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        return entry

    def _metadata(self, state: StageState, instruction: df.Instruction, created_by: str,
                  moves_state: bool = False) -> None:
        """A config-only step: cached so a rebuild reproduces its history entry."""
        key = sha(state.key, "meta", created_by)
        entry = self._cached(key)
        if entry is None:
            entry = {"history": self._history(created_by, empty=True)}
            self.cache[key] = entry
        else:
            self.out(" ---> Using cache\n")
            self.emit("build.cache_hit", step=self.step, key=key, layer=None)
        state.config.setdefault("history", []).append(entry["history"])
        state.config["created"] = entry["history"]["created"]
        if moves_state:
            state.key = key

    def _cached(self, key: str) -> dict | None:
        if self.options.no_cache:
            return None
        entry = self.cache.get(key)
        if entry is None:
            return None
        layer = entry.get("layer")
        if layer and not self.store.has_blob(layer["digest"]):
            return None
        return entry

    def _layer_step(self, state: StageState, key: str, created_by: str,
                    make_layer: Callable[[], dict]) -> None:
        entry = self._cached(key)
        rootfs = state.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        if entry is not None:
            self.out(" ---> Using cache\n")
            self.emit("build.cache_hit", step=self.step, key=key, layer=entry["layer"]["digest"],
                      chain=chain_ids(list(rootfs.get("diff_ids", [])) + [entry["layer"]["digest"]])[-1])
        else:
            layer = make_layer()
            entry = {"layer": layer, "history": self._history(created_by, empty=False),
                     "chain": chain_ids(list(rootfs.get("diff_ids", [])) + [layer["digest"]])[-1]}
            self.cache[key] = entry
            self.emit("layer.created", step=self.step, layer=layer["digest"], size=layer["size"],
                      chain=entry["chain"])
        state.layers.append(entry["layer"])
        rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + [entry["layer"]["digest"]]
        state.config.setdefault("history", []).append(entry["history"])
        state.config["created"] = entry["history"]["created"]
        state.key = key

    # ------------------------------------------------------------------ instructions

    def _expand(self, word: str, env: dict[str, str], instruction: df.Instruction) -> str:
        try:
            return self.lex.process_word(word, env)
        except df.DockerfileError as exc:
            raise BuildError(f"{self.options.dockerfile} line {instruction.line}: {exc.reason}") from None

    def _scope(self, state: StageState) -> dict[str, str]:
        """What $VARs see: the stage's ARGs, then ENV over them."""
        return {**state.args, **state.env}

    def _do_run(self, instruction: df.Instruction, state: StageState, built: dict) -> None:
        if instruction.heredocs and not instruction.json:
            script = instruction.heredocs[0].content
            argv = list(state.run_config.get("Shell") or DEFAULT_SHELL) + [script]
            created_by = f"RUN {instruction.original.splitlines()[0].removeprefix('RUN ').strip()}"
        elif instruction.json:
            argv = list(instruction.args)
            created_by = f"RUN {json.dumps(argv)}"
        else:
            argv = list(state.run_config.get("Shell") or DEFAULT_SHELL) + [instruction.args[0]]
            created_by = f"RUN {' '.join(argv)}" if argv[:2] != DEFAULT_SHELL else \
                f"/bin/sh -c {instruction.args[0]}"
        args_env = [f"{k}={v}" for k, v in sorted(state.args.items())]
        self.used_args |= set(state.args)
        key = sha(state.key, "run", json.dumps(argv), json.dumps(args_env))
        self._layer_step(state, key, created_by, lambda: self._run(state, argv, args_env))

    def _run(self, state: StageState, argv: list[str], args_env: list[str]) -> dict:
        engine = self.engine
        image = self.store.put_image(state.config, state.layers)
        config = ContainerConfig(
            image.id, cmd=argv, entrypoint=[], env=args_env,
            memory=self.options.memory or engine.policy.max_memory // 4,
            pids_limit=self.options.pids_limit or 1024, timeout=self.options.timeout)
        c = engine.create(config, image=image)
        self.out(f" ---> Running in {c.id[:12]}\n")
        try:
            engine.start(c, lambda stream, data: self.out(data.decode("utf-8", "replace")))
            status = engine.wait(c)
        except Exception as exc:
            engine.remove(c, force=True)
            raise BuildError(f"The command '{' '.join(argv)}' could not run: {exc}") from None
        if status.code != 0:
            engine.remove(c, force=True)
            what = "was killed by the OOM killer" if status.oom_killed else \
                "ran out of time" if status.timed_out else "returned a non-zero code"
            raise BuildError(f"The command '{' '.join(argv)}' {what}: {status.code}")
        with self.store.lock():
            with self.store.writing_layer() as (out, layer):
                write_upper_as_layer(c.rw_dir / "upper", out, engine.runtime.uid_base)
            self._remember(layer)
        engine.remove(c, force=True)
        self.out(f"Removing intermediate container {c.id[:12]}\n")
        return dict(layer)

    def _do_copy(self, instruction: df.Instruction, state: StageState, built: dict, add: bool = False) -> None:
        scope = self._scope(state)
        chown = instruction.flag("chown")
        chmod = instruction.flag("chmod")
        source_stage = instruction.flag("from")
        if add and source_stage:
            raise BuildError(f"line {instruction.line}: ADD has no --from (use COPY --from)")
        words = [self._expand(w, scope, instruction) for w in instruction.args]
        if instruction.heredocs:
            sources, dest = [], words[-1]
        else:
            if len(words) < 2:
                raise BuildError(f"line {instruction.line}: {instruction.cmd.upper()} needs a source and a destination")
            sources, dest = words[:-1], words[-1]
        workdir = state.run_config.get("WorkingDir") or "/"
        dest_path = posixpath.normpath(posixpath.join(workdir, dest))
        dest_is_dir = dest.endswith("/") or len(sources) > 1 or dest in (".", "./")
        owner = self._owner(chown, state) if isinstance(chown, str) else (0, 0)
        mode = int(chmod, 8) if isinstance(chmod, str) else None
        with self._source_root(source_stage, built, instruction) as root:
            plan = CopyPlan(root, self.ignore if root == self.context else None, owner, mode)
            for source in sources:
                if add and re.match(r"^[a-z][a-z0-9+.-]*://", source):
                    raise BuildError(f"line {instruction.line}: ADD {source}: there is no network in "
                                     "this sandbox; put the file in the build context instead")
                plan.add_source(source, dest_path, dest_is_dir, extract=add)
            for heredoc in instruction.heredocs:
                content = self._expand(heredoc.content, scope, instruction) if heredoc.expand else heredoc.content
                target = posixpath.join(dest_path, heredoc.name) if dest_is_dir else dest_path
                plan.add_data(target, content.encode())
            checksum = plan.checksum()
        created_by = f"{instruction.cmd.upper()} {checksum[:19]} in {dest_path}"
        key = sha(state.key, instruction.cmd, json.dumps(instruction.flags), dest_path,
                  str(dest_is_dir), checksum)
        self._layer_step(state, key, created_by,
                         lambda: self._copy_layer(plan, state, source_stage, built, instruction))

    def _copy_layer(self, plan: "CopyPlan", state: StageState, source_stage, built, instruction) -> dict:
        with self._merged_view(state.config, state.layers) as current:
            with self._source_root(source_stage, built, instruction) as root:
                plan.root = root
                with self.store.lock():
                    with self.store.writing_layer() as (out, layer):
                        plan.write(out, current)
                    self._remember(layer)
        return dict(layer)

    def _do_add(self, instruction: df.Instruction, state: StageState, built: dict) -> None:
        self._do_copy(instruction, state, built, add=True)

    def _owner(self, chown: str, state: StageState) -> tuple[int, int]:
        user, _, group = chown.partition(":")
        with self._merged_view(state.config, state.layers) as root:
            uid = resolve_id(user, root / "etc/passwd", "user")
            gid = resolve_id(group, root / "etc/group", "group") if group else \
                primary_gid(uid, root / "etc/passwd")
        return uid, gid

    @contextlib.contextmanager
    def _source_root(self, stage_ref, built: dict, instruction: df.Instruction):
        if not stage_ref:
            yield self.context
            return
        ref = stage_ref.lower()
        if ref in built:
            source = built[ref]
            with self._merged_view(source.config, source.layers) as root:
                yield root
            return
        try:
            image = self.store.get(stage_ref)
        except LookupError:
            raise BuildError(f"line {instruction.line}: COPY --from={stage_ref}: no such stage or "
                             "image in this host's cache") from None
        with self._merged_view(image.config, image.manifest["layers"]) as root:
            yield root

    @contextlib.contextmanager
    def _merged_view(self, config: dict, layers: list[dict]):
        """The image's files as a container would see them: a read-only overlay."""
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        dirs = [self.store.layer_dir(chain) for chain in chain_ids(diff_ids)]
        for path, layer in zip(dirs, layers):
            if not path.is_dir():
                extract_layer(self.store.blob_path(layer["digest"]), path)
        work = Path(tempfile.mkdtemp(prefix=".view-", dir=self.engine.state_dir))
        try:
            if not dirs:
                yield work
            elif len(dirs) == 1:
                yield dirs[0]
            else:
                lower = ":".join(str(d) for d in reversed(dirs))
                linux.mount("overlay", work, "overlay", linux.MS_RDONLY, f"lowerdir={lower}")
                try:
                    yield work
                finally:
                    linux.umount(work, linux.MNT_DETACH)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _do_env(self, instruction, state: StageState, built) -> None:
        env = state.env
        scope = self._scope(state)
        for key, value in df.env_pairs(instruction):
            value = self._expand(value, scope, instruction)
            env[key] = value
            scope[key] = value
        state.run_config["Env"] = [f"{k}={v}" for k, v in env.items()]
        pairs = " ".join(f"{k}={v}" for k, v in df.env_pairs(instruction))
        self._metadata(state, instruction, f"ENV {pairs}", moves_state=True)

    def _do_arg(self, instruction, state: StageState, built) -> None:
        for name, default in df.arg_declarations(instruction):
            if name in self.options.build_args:
                value = self.options.build_args[name]
                self.used_args.add(name)
            elif default is not None:
                value = self._expand(default, self._scope(state), instruction)
            elif name in self.global_args:
                value = self.global_args[name]
            else:
                value = None
            if value is not None:
                state.args[name] = value
        self._metadata(state, instruction, f"ARG {' '.join(instruction.args)}", moves_state=True)
        # The args' values are part of what later steps see: they move the state.
        state.key = sha(state.key, json.dumps(sorted(state.args.items())))

    def _do_workdir(self, instruction, state: StageState, built) -> None:
        path = self._expand(instruction.args[0], self._scope(state), instruction)
        state.run_config["WorkingDir"] = posixpath.normpath(
            posixpath.join(state.run_config.get("WorkingDir") or "/", path))
        self._metadata(state, instruction, f"WORKDIR {state.run_config['WorkingDir']}", moves_state=True)

    def _do_user(self, instruction, state: StageState, built) -> None:
        state.run_config["User"] = self._expand(instruction.args[0], self._scope(state), instruction)
        self._metadata(state, instruction, f"USER {state.run_config['User']}", moves_state=True)

    def _do_shell(self, instruction, state: StageState, built) -> None:
        state.run_config["Shell"] = list(instruction.args)
        self._metadata(state, instruction, f"SHELL {json.dumps(instruction.args)}", moves_state=True)

    def _command(self, instruction, state: StageState) -> list[str]:
        if instruction.json:
            return list(instruction.args)
        return list(state.run_config.get("Shell") or DEFAULT_SHELL) + [instruction.args[0]]

    def _do_cmd(self, instruction, state: StageState, built) -> None:
        state.run_config["Cmd"] = self._command(instruction, state)
        self._metadata(state, instruction, f"CMD {json.dumps(state.run_config['Cmd'])}")

    def _do_entrypoint(self, instruction, state: StageState, built) -> None:
        state.run_config["Entrypoint"] = self._command(instruction, state)
        state.run_config.pop("Cmd", None)  # as Docker: a new ENTRYPOINT resets an inherited CMD
        self._metadata(state, instruction, f"ENTRYPOINT {json.dumps(state.run_config['Entrypoint'])}")

    def _do_label(self, instruction, state: StageState, built) -> None:
        labels = dict(state.run_config.get("Labels") or {})
        scope = self._scope(state)
        for key, value in df.env_pairs(instruction):
            labels[self._expand(key, scope, instruction)] = self._expand(value, scope, instruction)
        state.run_config["Labels"] = labels
        self._metadata(state, instruction, f"LABEL {' '.join(f'{k}={v}' for k, v in df.env_pairs(instruction))}")

    def _do_maintainer(self, instruction, state: StageState, built) -> None:
        state.config["author"] = instruction.args[0]
        self._metadata(state, instruction, f"MAINTAINER {instruction.args[0]}")

    def _do_expose(self, instruction, state: StageState, built) -> None:
        ports = dict(state.run_config.get("ExposedPorts") or {})
        for word in instruction.args:
            port = self._expand(word, self._scope(state), instruction)
            if not re.match(r"^\d+(-\d+)?(/(tcp|udp|sctp))?$", port):
                raise BuildError(f"line {instruction.line}: invalid port {port!r} in EXPOSE")
            ports[port if "/" in port else f"{port}/tcp"] = {}
        state.run_config["ExposedPorts"] = ports
        self._metadata(state, instruction, f"EXPOSE {' '.join(instruction.args)}")

    def _do_volume(self, instruction, state: StageState, built) -> None:
        volumes = dict(state.run_config.get("Volumes") or {})
        for word in instruction.args:
            path = self._expand(word, self._scope(state), instruction)
            if not path.startswith("/"):
                raise BuildError(f"line {instruction.line}: VOLUME {path}: the path must be absolute")
            volumes[path] = {}
        state.run_config["Volumes"] = volumes
        self._metadata(state, instruction, f"VOLUME {json.dumps(sorted(volumes))}")

    def _do_stopsignal(self, instruction, state: StageState, built) -> None:
        state.run_config["StopSignal"] = self._expand(instruction.args[0], self._scope(state), instruction)
        self._metadata(state, instruction, f"STOPSIGNAL {state.run_config['StopSignal']}")

    def _do_healthcheck(self, instruction, state: StageState, built) -> None:
        state.run_config["Healthcheck"] = df.healthcheck_config(instruction)
        self._metadata(state, instruction, f"HEALTHCHECK {json.dumps(state.run_config['Healthcheck'])}")

    def _do_onbuild(self, instruction, state: StageState, built) -> None:
        triggers = list(state.run_config.get("OnBuild") or [])
        triggers.append(instruction.args[0])
        state.run_config["OnBuild"] = triggers
        self._metadata(state, instruction, f"ONBUILD {instruction.args[0]}")

    # ------------------------------------------------------------------ the cache

    def _load_cache(self) -> dict:
        try:
            cache = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in cache.items() if not k.startswith("pending:")}

    def _remember(self, layer: dict) -> None:
        """Makes a new layer blob a gc root at once (call under the store's lock):
        until the build's cache is saved, nothing else would refer to it."""
        self.cache[f"pending:{layer['digest']}"] = {"layer": dict(layer)}
        self._save_cache()

    def _save_cache(self) -> None:
        tmp = self.cache_path.with_name(f".build-cache.{os.getpid()}.{self.build_id}")
        tmp.write_bytes(canonical_json(self.cache))
        os.replace(tmp, self.cache_path)


def sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def config_id(config: dict) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()


def read_dockerfile(context: Path, name: str) -> str:
    if name == "-" or "\0" in name:
        raise BuildError("invalid Dockerfile name")
    path = posixpath.normpath(name.lstrip("/"))
    if path.startswith(".."):
        raise BuildError(f"the Dockerfile {name!r} must be inside the build context")
    try:
        fd = open_in(context, path)
    except FileNotFoundError:
        raise BuildError(f"no {name} in the build context") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(1 << 20)
    return data.decode("utf-8", "replace")


def open_in(root: Path, relative: str, flags: int = os.O_RDONLY) -> int:
    """Opens ``root/relative`` without following any symlink on the way."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildError(f"{relative!r} is outside the build context")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not parts:
            return os.dup(fd)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def resolve_id(name: str, db: Path, what: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        for line in db.read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name and len(fields) > 2:
                return int(fields[2])
    except OSError:
        pass
    raise BuildError(f"unable to find {what} {name}: no matching entries in {db.name} file")


def primary_gid(uid: int, passwd: Path) -> int:
    try:
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[2] == str(uid):
                return int(fields[3])
    except OSError:
        pass
    return uid


class DockerIgnore:
    """``.dockerignore``: patterns, ``**``, and ``!`` exceptions, the last match winning."""

    def __init__(self, patterns: list[tuple[bool, re.Pattern]]):
        self.patterns = patterns

    @classmethod
    def load(cls, context: Path) -> "DockerIgnore":
        try:
            fd = open_in(context, ".dockerignore")
        except (FileNotFoundError, BuildError):
            return cls([])
        with os.fdopen(fd) as f:
            lines = f.read().splitlines()
        patterns = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
            patterns.append((negate, re.compile(glob_regex(pattern))))
        return cls(patterns)

    def excluded(self, path: str) -> bool:
        """Is ``path`` (relative, '/'-separated) or one of its parents excluded?"""
        parts = path.split("/")
        result = False
        for negate, pattern in self.patterns:
            for i in range(1, len(parts) + 1):
                if pattern.match("/".join(parts[:i])):
                    result = not negate
                    break
        return result


def glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        else:
            c = pattern[i]
            out += "[^/]*" if c == "*" else "[^/]" if c == "?" else \
                fnmatch.translate(c)[4:-3] if c == "[" else re.escape(c)
            i += 1
    return f"^{out}$"


@dataclasses.dataclass
class CopyItem:
    dest: str                 # absolute path in the image
    kind: str                 # file, dir, symlink, data, archive
    source: str | None = None  # relative path under the source root
    data: bytes | None = None
    mode: int = 0o644
    target: str = ""
    mtime: int = 0


class CopyPlan:
    """What a COPY/ADD will write, gathered first so its checksum keys the cache."""

    def __init__(self, root: Path, ignore: DockerIgnore | None, owner: tuple[int, int], mode: int | None):
        self.root = root
        self.ignore = ignore
        self.owner = owner
        self.mode = mode
        self.items: list[CopyItem] = []
        self.digest = hashlib.sha256()

    def _ignored(self, rel: str) -> bool:
        return bool(self.ignore and rel and self.ignore.excluded(rel))

    def add_source(self, source: str, dest: str, dest_is_dir: bool, extract: bool) -> None:
        pattern = posixpath.normpath(source.lstrip("/"))
        if pattern.startswith(".."):
            raise BuildError(f"COPY failed: {source} is outside the build context")
        matches = self._glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
        matches = [m for m in matches if not self._ignored(m if m != "." else "")]
        if not matches:
            raise BuildError(f"COPY failed: no source files were specified or they match "
                             f".dockerignore: {source}")
        if len(matches) > 1:
            dest_is_dir = True
        for rel in matches:
            st = self._lstat(rel, source)
            if stat.S_ISDIR(st.st_mode):
                self._add_tree(rel, dest)
            elif extract and stat.S_ISREG(st.st_mode) and is_archive(self.root, rel):
                self.items.append(CopyItem(dest, "archive", rel))
                self._hash_file(rel, "archive")
            else:
                target = posixpath.join(dest, posixpath.basename(rel)) if dest_is_dir else dest
                self._add_one(rel, target, st)

    def _glob(self, pattern: str) -> list[str]:
        regex = re.compile(glob_regex(pattern))
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in sorted(dirnames + filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if regex.match(rel):
                    found.append(rel)
        return sorted(found)

    def _lstat(self, rel: str, source: str) -> os.stat_result:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    raise BuildError(f"COPY failed: file not found in build context: {source}") from None
                except OSError:
                    raise BuildError(f"COPY failed: {source} goes through a symlink") from None
                os.close(fd)
                fd = next_fd
            if not parts:
                return os.fstat(fd)
            try:
                return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise BuildError(f"COPY failed: file not found in build context: {source}") from None
        finally:
            os.close(fd)

    def _add_tree(self, rel: str, dest: str) -> None:
        """A directory source: its contents go into ``dest``."""
        base = "" if rel in (".", "") else rel
        top = self._lstat(base or ".", rel)
        self.items.append(CopyItem(dest, "dir", base or ".", mode=stat.S_IMODE(top.st_mode),
                                   mtime=int(top.st_mtime)))
        for dirpath, dirnames, filenames in os.walk(self.root / base if base else self.root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in sorted(dirnames + filenames):
                child = f"{rel_dir}/{name}" if rel_dir else name
                if self._ignored(child):
                    if name in dirnames:
                        dirnames.remove(name)
                    continue
                inner = child[len(base):].lstrip("/") if base else child
                self._add_one(child, posixpath.join(dest, inner), self._lstat(child, child))

    def _add_one(self, rel: str, target: str, st: os.stat_result) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            self.items.append(CopyItem(target, "dir", rel, mode=mode, mtime=int(st.st_mtime)))
            self.digest.update(f"dir\0{target}\0{mode:o}\n".encode())
        elif stat.S_ISLNK(st.st_mode):
            link = self._readlink(rel)
            self.items.append(CopyItem(target, "symlink", rel, mode=0o777, target=link,
                                       mtime=int(st.st_mtime)))
            self.digest.update(f"symlink\0{target}\0{link}\n".encode())
        elif stat.S_ISREG(st.st_mode):
            self.items.append(CopyItem(target, "file", rel, mode=mode))
            self.digest.update(f"file\0{target}\0{mode:o}\0".encode())
            self._hash_file(rel, "")
        # sockets, fifos, devices in the context are skipped, as Docker skips them

    def _readlink(self, rel: str) -> str:
        parent, _, name = rel.rpartition("/")
        fd = open_in(self.root, parent or ".", os.O_RDONLY | os.O_DIRECTORY) if parent else os.open(self.root, _DIR_FLAGS)
        try:
            return os.readlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def _hash_file(self, rel: str, tag: str) -> None:
        fd = open_in(self.root, rel)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 20):
                self.digest.update(chunk)
        self.digest.update(f"\0{tag}\n".encode())

    def add_data(self, target: str, data: bytes) -> None:
        self.items.append(CopyItem(target, "data", data=data, mode=0o644))
        self.digest.update(f"data\0{target}\0".encode() + hashlib.sha256(data).digest())

    def checksum(self) -> str:
        self.digest.update(f"owner {self.owner} mode {self.mode}".encode())
        return "sha256:" + self.digest.hexdigest()

    # ------------------------------------------------------------------ writing the layer

    def write(self, out, current: Path) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            written: set[str] = set()
            for item in self.items:
                self._parents(tar, item.dest, current, written)
                if item.kind == "archive":
                    self._unpack_archive(tar, item, written)
                    continue
                info = tarfile.TarInfo(item.dest.lstrip("/"))
                info.uid, info.gid = self.owner
                info.mtime = int(time.time()) if item.kind == "data" else item.mtime
                info.mode = self.mode if self.mode is not None and item.kind != "symlink" else item.mode
                if item.kind == "dir":
                    if item.dest in written:
                        continue
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif item.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, item.target
                    tar.addfile(info)
                elif item.kind == "data":
                    info.size = len(item.data)
                    tar.addfile(info, io_bytes(item.data))
                else:
                    fd = open_in(self.root, item.source)
                    with os.fdopen(fd, "rb") as f:
                        st = os.fstat(f.fileno())
                        info.size = st.st_size
                        info.mtime = int(st.st_mtime)
                        tar.addfile(info, f)
                written.add(item.dest)

    def _parents(self, tar, dest: str, current: Path, written: set[str]) -> None:
        """Parent directories, with the attributes they already have in the image."""
        parts = [p for p in dest.split("/") if p][:-1]
        path = ""
        for part in parts:
            path = f"{path}/{part}"
            if path in written:
                continue
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type = tarfile.DIRTYPE
            try:
                st = os.stat(current / path.lstrip("/"), follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise BuildError(f"COPY failed: the destination {dest} goes through the symlink "
                                 f"{path} in the image")
            if st is not None:
                info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
            else:
                info.mode, (info.uid, info.gid), info.mtime = 0o755, self.owner, int(time.time())
            tar.addfile(info)
            written.add(path)

    def _unpack_archive(self, tar, item: CopyItem, written: set[str]) -> None:
        """ADD of a local archive: its entries land under ``dest``, safely."""
        fd = open_in(self.root, item.source)
        with os.fdopen(fd, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as archive:
            for member in archive:
                name = posixpath.normpath(member.name.lstrip("/"))
                if name.startswith("..") or (member.islnk() and posixpath.normpath(member.linkname).startswith("..")):
                    raise BuildError(f"ADD failed: {item.source} has an entry outside its root: {member.name}")
                if member.isdev() or member.isfifo():
                    raise BuildError(f"ADD failed: {item.source} holds a device or fifo: {member.name}")
                member.name = posixpath.join(item.dest.lstrip("/"), name) if name != "." else item.dest.lstrip("/")
                if member.islnk():
                    member.linkname = posixpath.join(item.dest.lstrip("/"), posixpath.normpath(member.linkname))
                tar.addfile(member, archive.extractfile(member) if member.isreg() else None)


def is_archive(root: Path, rel: str) -> bool:
    fd = open_in(root, rel)
    with os.fdopen(fd, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def io_bytes(data: bytes):
    import io
    return io.BytesIO(data)
