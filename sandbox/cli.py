"""``glassbox``: up, daemon, run, bench.

The mount namespace is made private first thing, before any thread exists
(see ``engine.enter_private_mount_namespace``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading

SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` — as ``docker run -m`` takes them."""
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 64m, 1g, 512k")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


def parse_env(text: str) -> str:
    if "=" not in text:
        value = os.environ.get(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"-e {text}: no '=' and no such variable here")
        return f"{text}={value}"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glassbox", description="A container you can see through.")
    sub = parser.add_subparsers(dest="command", required=True)

    def state(p):
        p.add_argument("--state-dir", help="default: $GLASSBOX_STATE_DIR or /var/lib/glassbox")

    up = sub.add_parser("up", help="the daemon and the web app together")
    state(up)
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--registry-users", help="JSON file of the classroom registry's users "
                    "(without it the registry is open to loopback clients only)")
    up.add_argument("--idle-timeout", type=float, default=None,
                    help="seconds after which an unused visitor's Docker host is freed (default 1800)")
    up.add_argument("--quota", action="append", default=[], metavar="NAME=N",
                    help="a visitor host's limit: starts_per_minute, execs_per_minute, "
                         "builds_per_minute, running_containers, running_memory (bytes, or 512m); "
                         "N=none lifts it; repeatable")
    up.add_argument("--hosts-per-address", type=int, default=None, metavar="N",
                    help="new Docker hosts one client address may be given per hour (default 20); "
                         "classroom members don't count: a class behind one NAT address joins by code")
    up.add_argument("--database-url", default=None,
                    help="SQLAlchemy URL of the progress and classroom database (default: SQLite "
                         "in the state dir; e.g. postgresql://user:pw@db/glassbox)")
    up.add_argument("--public-url", default=None, metavar="URL",
                    help="how students reach the site (e.g. http://10.0.0.5:8000), shown on the "
                         "instructor's dashboard as the join address")
    up.add_argument("--lessons", default=None, metavar="DIR",
                    help="the lessons to serve (default: the checkout's lessons/); see lessons/README.md")
    up.add_argument("--allowed-origin", action="append", default=[],
                    help="an origin (https://name:port) whose pages may open Socket.IO connections, "
                         "when the site is reached through another name (a proxy); repeatable")

    daemon = sub.add_parser("daemon", help="the daemon alone")
    state(daemon)

    # -h is --hostname, as in docker run; help is --help only.
    run = sub.add_parser("run", help="run one container straight through the engine", add_help=False)
    run.add_argument("--help", action="help", help="show this help and exit")
    state(run)
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("--name")
    run.add_argument("-m", "--memory", type=parse_size, default=None, help="memory limit, e.g. 64m")
    run.add_argument("--pids-limit", type=int, default=None)
    run.add_argument("--cpus", type=float, default=None)
    run.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds")
    run.add_argument("--writable-size", type=parse_size, default=None,
                     help="cap of the writable layer (default 64m)")
    run.add_argument("--hostname", "-h", dest="hostname")
    run.add_argument("-e", "--env", type=parse_env, action="append", default=[])
    run.add_argument("-v", "--volume", action="append", default=[], help="HOSTDIR:PATH[:ro]")
    run.add_argument("-w", "--workdir")
    run.add_argument("-u", "--user")
    run.add_argument("--entrypoint")
    run.add_argument("-t", "--tty", action="store_true", help="a PTY attached to this terminal")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run.add_argument("--events", action="store_true", help="every event as a JSON line on stderr")
    run.add_argument("image")
    run.add_argument("cmd", nargs=argparse.REMAINDER)

    bench = sub.add_parser("bench", help="benchmarks (last line: JSON figures)")
    state(bench)
    bench.add_argument("name", choices=["start", "build", "distribution", "cli", "events", "graphs", "lessons"])
    bench.add_argument("-n", type=int, default=30)

    build = sub.add_parser("build", help="build an image from a Dockerfile")
    state(build)
    build.add_argument("-t", "--tag", action="append", default=[])
    build.add_argument("-f", "--file", default="Dockerfile")
    build.add_argument("--build-arg", action="append", default=[], type=parse_env)
    build.add_argument("--target")
    build.add_argument("--no-cache", action="store_true")
    build.add_argument("context")

    fsck = sub.add_parser("fsck", help="verify every blob's digest and every reference")
    state(fsck)

    terminal = sub.add_parser("terminal", help="open a host terminal (the docker CLI inside)")
    state(terminal)
    terminal.add_argument("--host", default="default")

    host = sub.add_parser("host", help="Docker hosts of a running daemon: create, ls, rm")
    state(host)
    host.add_argument("action", choices=["create", "ls", "rm"])
    host.add_argument("name", nargs="?")

    lessons = sub.add_parser("lessons", help="the lessons: lint them")
    lessons.add_argument("action", choices=["lint"])
    lessons.add_argument("directory", nargs="?", help="default: the checkout's lessons/")
    return parser


def command_lessons(args) -> int:
    """``glassbox lessons lint [DIR]``: every problem of every lesson, one per line."""
    from pathlib import Path

    from app import CHECKOUT, lessons
    root = Path(args.directory or CHECKOUT / "lessons")
    if not root.is_dir():
        print(f"glassbox: {root} is not a directory", file=sys.stderr)
        return 2
    problems = lessons.lint(root)
    for problem in problems:
        print(problem)
    found = lessons.read_all(root)[0]
    print(f"{len(found)} lessons, {sum(len(l.steps) for l in found)} steps; "
          f"{len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def parse_quotas(items: list[str]) -> dict:
    import dataclasses
    from sandbox.quota import Quota
    names = {f.name for f in dataclasses.fields(Quota)}
    quotas = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value:
            raise SystemExit(f"glassbox: --quota {item!r}: expected NAME=N with NAME one of "
                             f"{', '.join(sorted(names))}")
        if value.lower() == "none":
            quotas[name] = None
        elif name == "running_memory":
            quotas[name] = parse_size(value)
        elif value.isdigit():
            quotas[name] = int(value)
        else:
            raise SystemExit(f"glassbox: --quota {item!r}: {value!r} is not a whole number")
    return quotas


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sandbox.engine import enter_private_mount_namespace
    if os.geteuid() == 0:
        enter_private_mount_namespace()
    if args.command == "run":
        return command_run(args)
    if args.command == "daemon":
        from sandbox.daemon import serve
        return serve(args.state_dir)
    if args.command == "up":
        from sandbox.daemon import serve
        if args.registry_users:
            os.environ["GLASSBOX_REGISTRY_USERS_FILE"] = os.path.abspath(args.registry_users)
        if args.idle_timeout:
            os.environ["GLASSBOX_IDLE_TIMEOUT"] = str(args.idle_timeout)
        if args.quota:
            os.environ["GLASSBOX_HOST_QUOTA"] = json.dumps(parse_quotas(args.quota))
        if args.allowed_origin:
            os.environ["GLASSBOX_ALLOWED_ORIGINS"] = ",".join(args.allowed_origin)
        if args.hosts_per_address is not None:
            os.environ["GLASSBOX_HOSTS_PER_ADDRESS"] = str(args.hosts_per_address)
        if args.database_url:
            os.environ["GLASSBOX_DATABASE_URL"] = args.database_url
        if args.public_url:
            os.environ["GLASSBOX_PUBLIC_URL"] = args.public_url
        if args.lessons:
            os.environ["GLASSBOX_LESSONS_DIR"] = os.path.abspath(args.lessons)
        return serve(args.state_dir, web=(args.host, args.port))
    if args.command == "bench":
        from sandbox import bench
        return bench.main(args)
    if args.command == "build":
        return command_build(args)
    if args.command == "fsck":
        return command_fsck(args)
    if args.command == "host":
        return command_host(args)
    if args.command == "lessons":
        return command_lessons(args)
    if args.command == "terminal":
        return command_terminal(args)
    return 2


def command_terminal(args) -> int:
    """A host terminal in this terminal: the control socket makes it, docker attaches to it."""
    import shutil
    from sandbox.engine import state_dir_from_env
    status, reply = control_request(state_dir_from_env(args.state_dir), "POST",
                                    f"/glassbox/hosts/{args.host}/terminal")
    if status != 201:
        print(f"glassbox: {reply.get('message', reply)}", file=sys.stderr)
        return 1
    docker = shutil.which("docker")
    env = dict(os.environ, DOCKER_HOST=f"unix://{reply['Socket']}")
    os.execve(docker, [docker, "start", "-ai", reply["Id"]], env)


def control_request(state_dir, method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    import http.client
    import json as json_module
    import socket as sockets
    path = str(state_dir / "glassbox.sock")

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            self.sock.connect(path)

    conn = Connection("localhost", timeout=120)
    try:
        conn.request(method, url, body=None if body is None else json_module.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        return 503, {"message": f"no daemon answers on {path}: {exc}"}
    return response.status, json_module.loads(data) if data else {}


def command_host(args) -> int:
    """Talks to the daemon's control socket, as the web app does."""
    from sandbox.engine import state_dir_from_env
    if args.action != "ls" and not args.name:
        print(f"glassbox host {args.action}: which host? (glassbox host {args.action} NAME)", file=sys.stderr)
        return 2
    method, url, body = {"ls": ("GET", "/glassbox/hosts", None),
                         "create": ("POST", "/glassbox/hosts", {"Name": args.name}),
                         "rm": ("DELETE", f"/glassbox/hosts/{args.name}", None)}[args.action]
    status, reply = control_request(state_dir_from_env(args.state_dir), method, url, body)
    if status >= 300:
        print(f"glassbox: {reply.get('message', reply)}", file=sys.stderr)
        return 1
    if args.action == "ls":
        for host in reply:
            print(f"{host['Name']:20} {host['Socket']}  containers={host['Containers']} images={host['Images']}")
    elif args.action == "create":
        print(reply["Socket"])
    return 0


def command_build(args) -> int:
    from sandbox.builder import BuildError, BuildOptions
    from sandbox.engine import Engine, EngineError
    try:
        engine = Engine(args.state_dir)
    except EngineError as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return 1
    options = BuildOptions(tags=args.tag, dockerfile=args.file, target=args.target,
                           no_cache=args.no_cache,
                           build_args=dict(a.split("=", 1) for a in args.build_arg))
    try:
        engine.build(args.context, options, lambda line: (sys.stdout.write(line), sys.stdout.flush()))
        return 0
    except (BuildError, EngineError, ValueError) as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()


def command_fsck(args) -> int:
    """Read-only: safe while a daemon runs on the same state dir."""
    from sandbox.engine import state_dir_from_env
    from sandbox.images import ImageStore
    store = ImageStore(state_dir_from_env(args.state_dir))
    problems = store.fsck()
    for problem in problems:
        print(problem)
    if problems:
        print(f"glassbox fsck: {len(problems)} problem{'s' if len(problems) > 1 else ''} in {store.root}")
        return 1
    blobs = len(list(store.blobs.iterdir())) if store.blobs.is_dir() else 0
    print(f"glassbox fsck: {store.root} is consistent ({blobs} blobs, "
          f"{sum(len(store._index(layout).get('manifests', [])) for layout in store.layouts())} "
          "image references, every digest verified)")
    return 0


def command_run(args) -> int:
    from sandbox.engine import Engine, EngineError
    from sandbox.runtime import ContainerConfig, ContainerError, Mount, DEFAULT_MEMORY, DEFAULT_PIDS, DEFAULT_WRITABLE

    try:
        mounts = [Mount.parse(v) for v in args.volume]
    except ValueError as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return 125
    config = ContainerConfig(
        image=args.image, cmd=args.cmd or None,
        entrypoint=[args.entrypoint] if args.entrypoint else None,
        env=args.env, name=args.name, hostname=args.hostname, workdir=args.workdir,
        user=args.user,
        memory=args.memory if args.memory is not None else DEFAULT_MEMORY,
        pids_limit=args.pids_limit if args.pids_limit is not None else DEFAULT_PIDS,
        cpus=args.cpus, timeout=args.timeout,
        writable_size=args.writable_size or DEFAULT_WRITABLE,
        mounts=mounts, tty=args.tty, open_stdin=args.interactive or args.tty,
        auto_remove=args.rm)
    try:
        engine = Engine(args.state_dir)
    except EngineError as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return 125
    if args.events:
        def print_event(event):
            sys.stderr.write(event.to_json() + "\n")
            sys.stderr.flush()
        engine.bus.subscribe(print_event)
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def relay(stream: str, data: bytes) -> None:
        target = err if stream == "stderr" else out
        target.write(data)
        target.flush()

    terminal = Terminal() if args.tty and sys.stdin.isatty() else None
    try:
        return run_attached(engine, config, args, relay, terminal)
    except (EngineError, ContainerError) as exc:
        print(f"glassbox: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 125)
    finally:
        engine.close()


def run_attached(engine, config, args, relay, terminal) -> int:
    container = engine.create(config)
    if terminal:
        terminal.enter()
    try:
        process = engine.start(container, relay)
        if config.open_stdin:
            forward_stdin(process, raw=bool(terminal))
        if terminal:
            terminal.follow_size(process)
        # Ctrl-C and SIGTERM go to the container, as they would with docker run.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: process.signal(s))
        status = engine.wait(container)
    finally:
        if terminal:
            terminal.leave()
    if status.error:
        print(f"glassbox: {status.error}", file=sys.stderr)
    elif status.oom_killed:
        print("glassbox: the container was killed by the kernel's OOM killer "
              f"(memory limit {config.memory} bytes)", file=sys.stderr)
    elif status.timed_out:
        print(f"glassbox: the container was killed after its {args.timeout} s time limit",
              file=sys.stderr)
    return status.code


def forward_stdin(process, raw: bool) -> None:
    def pump():
        fd = sys.stdin.fileno()
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                if not raw:
                    process.close_stdin()
                return
            try:
                process.write_stdin(data)
            except (OSError, ValueError):
                return
    threading.Thread(target=pump, daemon=True, name="stdin").start()


class Terminal:
    """The caller's terminal in raw mode while a container owns it."""

    def __init__(self):
        import termios
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)

    def enter(self) -> None:
        import tty
        tty.setraw(self.fd)

    def leave(self) -> None:
        import termios
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def follow_size(self, process) -> None:
        def resize(*_):
            size = os.get_terminal_size(self.fd)
            process.resize(size.lines, size.columns)
        resize()
        signal.signal(signal.SIGWINCH, resize)


if __name__ == "__main__":
    sys.exit(main())
