"""Images, builds, volumes and disk usage in the daemon's API (the Docker Engine API's routes).

A mixin of the API's handler: every method is a route, registered with ``@route``.
Image names hold ``/`` and ``:`` (``127.0.0.1:8000/me/app:v1``), so the routes
under ``/images/`` match the name greedily and the action on the suffix.

Progress streams (build, pull, push) send their headers with their first line,
as dockerd does: a request refused before anything happened is an ordinary HTTP
error (404, 400…), one that fails later is an ``errorDetail`` line in the stream.
"""
from __future__ import annotations

import base64
import binascii
import calendar
import fnmatch
import json
import logging
import os
import secrets
import stat
import threading
import time
from urllib.parse import unquote

from sandbox.api_base import MAX_JSON_BODY, ApiError, route
from sandbox.builder import BuildError, BuildOptions
from sandbox.engine import Conflict, NotFound
from sandbox.images import BASE_IMAGES, Image, check_reference

log = logging.getLogger(__name__)

MAX_BUILD_CONTEXT = 512 * 1024**2
MAX_IMAGE_ARCHIVE = 4 * 1024**3
# Names that mean Docker Hub: the sandbox can't reach it.
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
NO_PUBLIC_REGISTRY = "no public registry (Docker Hub) is reachable from this sandbox"


class ImageRoutes:
    # ------------------------------------------------------------------ images

    @route("GET", r"/images/json")
    def images_json(self):
        filters = self.filters(("dangling", "reference", "label"))
        dangling = one_boolean(filters, "dangling")
        counts = container_counts(self.engine)
        out = []
        for image, tags in images_by_id(self.engine):
            if dangling is not None and dangling != (not tags):
                continue
            if "reference" in filters:
                tags = [t for t in tags if any(reference_matches(p, t) for p in filters["reference"])]
                if not tags:
                    continue
            if "label" in filters and not labels_match(image, filters["label"]):
                continue
            out.append(image_summary(image, tags, counts.get(image.id, 0)))
        self.send_json(200, out)

    @route("GET", r"/images/(.+)/json")
    def images_inspect(self, name):
        image = self.image(image_ref(name))
        self.send_json(200, image_inspect(image, self.engine.images.tags_of(image.id)))

    @route("GET", r"/images/(.+)/history")
    def images_history(self, name):
        image = self.image(image_ref(name))
        self.send_json(200, image_history(image, self.engine.images.tags_of(image.id)))

    @route("POST", r"/images/(.+)/tag")
    def images_tag(self, name):
        repo, tag = self.query.get("repo") or "", self.query.get("tag") or "latest"
        if not repo:
            raise ApiError(400, "tag needs a repository name (?repo=NAME&tag=TAG)")
        if "@" in repo or "@" in tag:
            raise ApiError(400, "an image can be tagged with a name and a tag, not a digest")
        image = self.engine.images.tag(self.image(image_ref(name)).id, new_name(f"{repo}:{tag}"))
        self.engine.bus.emit("image.tagged", {"image": image.id}, {"name": image.name},
                             host=self.engine.host)
        self.send_json(201, None)

    @route("DELETE", r"/images/(.+)")
    def images_delete(self, name):
        ref = image_ref(name)
        self.image(ref)
        try:
            result = self.engine.remove_image(ref, force=self.flag("force"))
        except Conflict as exc:
            raise ApiError(409, f"conflict: {exc}") from None
        answer = [{"Untagged": n} for n in result["untagged"]]
        answer += [{"Deleted": d} for d in result["deleted"]]
        # The layers nothing uses any more went with it, as dockerd lists them — only when
        # an image went: an untag that deletes nothing reports nothing the collection took
        # from elsewhere (say, the layers a --no-cache rebuild left unused).
        if result["deleted"]:
            answer += [{"Deleted": chain} for chain in result.get("collected", {}).get("layers", [])]
        self.send_json(200, answer)

    @route("POST", r"/images/prune")
    def images_prune(self):
        filters = self.filters(("dangling",))
        dangling_only = one_boolean(filters, "dangling") is not False
        used = {c.image.id for c in self.engine.list()}
        deleted, reclaimed = [], 0
        for image, tags in images_by_id(self.engine):
            if image.id in used or (dangling_only and tags):
                continue
            if any(t in BASE_IMAGES for t in tags):
                continue  # the sandbox can't pull them back: they stay (rebuilt only at start-up)
            sizes = {p.name: layer_size(p) for p in image.layers}
            try:
                result = self.engine.remove_image(image.id)
            except Conflict:
                continue  # a child image still needs it
            deleted += [{"Untagged": n} for n in result["untagged"]]
            deleted += [{"Deleted": d} for d in result["deleted"]]
            for chain in result.get("collected", {}).get("layers", []):
                deleted.append({"Deleted": chain})
                reclaimed += sizes.get(chain.removeprefix("sha256:"), 0)
        self.send_json(200, {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed})

    # ------------------------------------------------------------------ save and load

    @route("GET", r"/images/get")
    def images_save_many(self):
        self.send_image_archive([familiar(n) for n in self.query_all.get("names", []) if n])

    @route("GET", r"/images/(.+)/get")
    def images_save(self, name):
        self.send_image_archive([image_ref(name)])

    def send_image_archive(self, names: list[str]) -> None:
        if not names:
            raise ApiError(400, "save needs at least one image (?names=IMAGE)")
        for name in names:
            self.image(name)  # a missing image is a 404, before any byte of the tar
        self.start_stream("application/x-tar")
        try:
            with ChunkWriter(self) as out:
                self.engine.export_images(names, out)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except Exception:
            # Part of the tar has gone out: a JSON error in it would only corrupt it further.
            # Closing without the last chunk tells the client the body is incomplete.
            log.exception("docker save of %s failed after the response began", names)
            self.close_connection = True
            return
        self.end_stream()

    @route("POST", r"/images/load")
    def images_load(self):
        body = LimitedBody(self.body(), MAX_IMAGE_ARCHIVE, "the image archive")
        try:
            images = self.engine.import_images(body)
        finally:
            if not body.finished:
                self.close_connection = True
        self.start_stream("application/json")
        said = set()
        for image in images:
            line = f"Loaded image: {image.name}\n" if image.name else f"Loaded image ID: {image.id}\n"
            if line not in said:
                said.add(line)
                self.write_json_line({"stream": line})
        self.end_stream()

    # ------------------------------------------------------------------ pull and push

    @route("POST", r"/images/create")
    def images_create(self):
        if self.query.get("fromSrc") is not None:
            raise ApiError(400, "docker import is not supported here: use docker load for a "
                                "docker save archive, or a Dockerfile FROM scratch with ADD")
        image = self.query.get("fromImage") or ""
        if not image:
            raise ApiError(400, "pull needs an image (?fromImage=NAME&tag=TAG)")
        reference = with_tag(image, self.query.get("tag") or "")
        if registry_of(reference) is None:
            raise ApiError(404, self.no_registry_message(reference))
        username, password = self.registry_auth()
        lines = JsonLines(self)
        self.engine.pull(reference, username, password, progress=lines.write)
        lines.finish()

    def image(self, ref: str) -> Image:
        """An image by name or id; a missing one in Docker's words (docker-py looks for them)."""
        try:
            return self.engine.images.get(ref)
        except LookupError as exc:
            if "ambiguous" in str(exc):
                raise ApiError(400, str(exc).strip("'\"")) from None
            here = ", ".join(sorted({t for _, tags in images_by_id(self.engine) for t in tags})) or "none"
            raise ApiError(404, f"No such image: {ref} (images here: {here})") from None

    def no_registry_message(self, reference: str) -> str:
        name = familiar(reference)
        try:
            self.engine.images.get(name)
            return f"cannot pull {name}: {NO_PUBLIC_REGISTRY}; {name} is already here, use it as it is"
        except LookupError:
            pass
        here = ", ".join(sorted({t for _, tags in images_by_id(self.engine) for t in tags})) or "none"
        return (f"cannot pull {name}: {NO_PUBLIC_REGISTRY}. Pull it from the classroom registry "
                f"(docker pull HOST:PORT/NAME:TAG), build it (docker build -t {name} .) or load it "
                f"(docker load -i FILE). Images here: {here}")

    @route("POST", r"/images/(.+)/push")
    def images_push(self, name):
        name = unquote(name)
        tag = self.query.get("tag") or ""
        if registry_of(name) is None:
            raise ApiError(400, f"cannot push {familiar(name)}: {NO_PUBLIC_REGISTRY}. Tag it with the "
                                f"classroom registry's address first (docker tag {familiar(name)} "
                                "HOST:PORT/NAME:TAG), then push that")
        if tag:
            refs = [with_tag(name, tag)]
            self.image(refs[0])
        else:  # every tag of the repository, as docker push --all-tags
            refs = [t for _, tags in images_by_id(self.engine) for t in tags
                    if t.rsplit(":", 1)[0] == name]
            if not refs:
                raise ApiError(404, f"an image does not exist locally with the name: {name}")
        username, password = self.registry_auth()
        lines = JsonLines(self)
        lines.write({"status": f"The push refers to repository [{name}]"})
        for ref in refs:
            self.engine.push(ref, ref, username, password, progress=lines.write)
        lines.finish()

    @route("POST", r"/auth")
    def system_auth(self):
        """``docker login HOST:PORT``: checks the credentials against the registry's /v2/."""
        from sandbox.distribution import DistributionError, RegistryClient
        body = self.read_json(required=True)
        server = str(body.get("serveraddress") or "")
        server = server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if not server or server in DOCKER_HUB:
            raise ApiError(400, f"cannot log in to Docker Hub: {NO_PUBLIC_REGISTRY}. Log in to the "
                                "classroom registry: docker login HOST:PORT")
        try:
            client = RegistryClient(server, str(body.get("username") or ""), str(body.get("password") or ""))
            client.request("GET", "/v2/", ok=(200,)).read()
        except DistributionError as exc:
            status = 401 if exc.status in (401, 403) else 502 if exc.status >= 500 else 400
            raise ApiError(status, f"login to {server} failed: {exc}") from None
        self.send_json(200, {"Status": "Login Succeeded", "IdentityToken": ""})

    def registry_auth(self) -> tuple[str | None, str | None]:
        """``X-Registry-Auth``: base64url of JSON ``{"username", "password", …}``."""
        header = (self.headers.get("X-Registry-Auth") or "").strip()
        if not header:
            return None, None
        try:
            auth = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        except (ValueError, binascii.Error):
            raise ApiError(400, "invalid X-Registry-Auth header: expected base64url-encoded JSON "
                                '{"username": …, "password": …}') from None
        if not isinstance(auth, dict):
            raise ApiError(400, "invalid X-Registry-Auth header: expected a JSON object")
        username, password = auth.get("username"), auth.get("password")
        if not username and auth.get("auth"):  # "auth": base64 of "user:password", as config.json has it
            try:
                username, _, password = base64.b64decode(str(auth["auth"])).decode().partition(":")
            except (ValueError, binascii.Error):
                raise ApiError(400, "invalid X-Registry-Auth header: unreadable auth field") from None
        if not username:
            return None, None
        return str(username), None if password is None else str(password)

    # ------------------------------------------------------------------ build and commit

    @route("POST", r"/build/prune")
    def build_prune(self):
        """``docker builder prune``: forget the host's build cache; collect what only it kept."""
        result = self.engine.prune_build_cache()
        freed = len(result["blobs"]) + len(result["layers"])
        self.send_json(200, {"CachesDeleted": [f"entry-{i}" for i in range(result["entries"])],
                             "SpaceReclaimed": 0 if not freed else -1})

    @route("POST", r"/build")
    def build_image(self):
        if self.query.get("remote"):
            raise ApiError(400, "building from a URL or git repository is not supported here: "
                                "send the build context (docker build DIRECTORY)")
        options = self.build_options()
        quiet = self.flag("q")
        lines = JsonLines(self)
        closing: list[str] = []

        def out(text: str) -> None:
            # dockerd sends the image ID before "Successfully built/tagged"; the builder
            # says those as it finishes, so they wait for the ID.
            if text.startswith(("Successfully built ", "Successfully tagged ")):
                closing.append(text)
            elif not quiet:
                lines.write({"stream": text})

        context = LimitedBody(self.body(), MAX_BUILD_CONTEXT, "the build context")
        try:
            image = self.engine.build_context(EndedTar(context), options, out)
        except BuildError as exc:
            raise ApiError(400, str(exc)) from None
        finally:
            if not context.finished:
                self.close_connection = True
        lines.write({"aux": {"ID": image.id}})
        if quiet:
            lines.write({"stream": image.id + "\n"})
        else:
            for text in closing:
                lines.write({"stream": text})
        lines.finish()

    def build_options(self) -> BuildOptions:
        tags = [new_name(t) for t in self.query_all.get("t", []) if t]
        build_args = self.json_object_query("buildargs")
        memory = self.integer("memory")
        return BuildOptions(
            tags=tags,
            dockerfile=self.query.get("dockerfile") or "Dockerfile",
            build_args={str(k): str(v) for k, v in build_args.items() if v is not None},
            target=self.query.get("target") or None,
            no_cache=self.flag("nocache"),
            labels={str(k): str(v) for k, v in self.json_object_query("labels").items()},
            memory=memory if memory and memory > 0 else None)

    def json_object_query(self, name: str) -> dict:
        """A query parameter holding a JSON object (``buildargs``, ``labels``)."""
        raw = self.query.get(name)
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise ApiError(400, f"invalid {name}: not JSON ({raw[:80]!r})") from None
        if value is not None and not isinstance(value, dict):
            raise ApiError(400, f"invalid {name}: expected a JSON object")
        return value or {}

    @route("POST", r"/commit")
    def commit_container(self):
        container = self.query.get("container") or ""
        if not container:
            raise ApiError(400, "commit needs a container (?container=NAME)")
        repo, tag = self.query.get("repo") or "", self.query.get("tag") or ""
        if tag and not repo:
            raise ApiError(400, "a tag needs a repository name (?repo=NAME&tag=TAG)")
        name = new_name(f"{repo}:{tag}" if tag else repo) if repo else None
        # The CLI sends one `changes` per --change; docker-py may join them with newlines.
        changes: list[str] | dict = [line for value in self.query_all.get("changes", [])
                                     for line in value.splitlines() if line.strip()]
        config = self.optional_json_object()
        if not changes and config:
            changes = {k: v for k, v in config.items() if k in COMMIT_CONFIG_KEYS and v}
            if isinstance(changes.get("Env"), list):  # merged into the container's, as dockerd does
                env = dict(item.partition("=")[::2] for item in self.engine.get(container).env)
                env.update(str(item).partition("=")[::2] for item in changes["Env"])
                changes["Env"] = [f"{k}={v}" for k, v in env.items()]
        image = self.engine.commit(container, name, author=self.query.get("author") or "",
                                   message=self.query.get("comment") or "", changes=changes)
        self.send_json(201, {"Id": image.id})

    def optional_json_object(self) -> dict:
        """A body that may be absent, ``null`` or a JSON object."""
        raw = self.body().read(MAX_JSON_BODY + 1)
        if len(raw) > MAX_JSON_BODY:
            raise ApiError(413, "request body too large (limit 1 MiB)")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON in the request body: {exc}") from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    # ------------------------------------------------------------------ volumes

    @route("GET", r"/volumes")
    def volumes_list(self):
        filters = self.filters(("name", "dangling", "label"))
        dangling = one_boolean(filters, "dangling")
        out = []
        for volume in self.engine.volumes.list():
            if "name" in filters and not any(n in volume.name for n in filters["name"]):
                continue
            if dangling is not None and dangling == bool(self.engine.volume_users(volume.name)):
                continue
            if "label" in filters and not all(label_matches(volume.labels, f) for f in filters["label"]):
                continue
            out.append(volume.to_docker())
        self.send_json(200, {"Volumes": out, "Warnings": []})

    @route("POST", r"/volumes/create")
    def volumes_create(self):
        body = self.read_json()
        if (body.get("Driver") or "local") != "local":
            raise ApiError(400, f"volume driver {body['Driver']!r} is not available here: only 'local'")
        if body.get("DriverOpts"):
            raise ApiError(400, "volume driver options (-o) are not supported here")
        # Unnamed, it gets a random name, but it isn't anonymous: prune keeps it, as Docker does.
        name, labels = body.get("Name") or secrets.token_hex(32), body.get("Labels") or {}
        if not isinstance(name, str):
            raise ApiError(400, "Name must be a string")
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ApiError(400, "Labels must be an object of strings")
        volume = self.engine.create_volume(name, labels)
        self.send_json(201, volume.to_docker())

    @route("GET", r"/volumes/([^/]+)")
    def volumes_inspect(self, name):
        self.send_json(200, self.engine.volumes.get(unquote(name)).to_docker())

    @route("GET", r"/glassbox/volumes/([^/]+)/files")
    def volumes_files(self, name):
        """What this host's volume holds now, whether or not a container uses it."""
        volume = self.engine.volumes.get(unquote(name))
        files, truncated = volume_files(volume.mountpoint)
        self.send_json(200, {"Volume": volume.name, "Files": files, "Truncated": truncated})

    @route("DELETE", r"/volumes/([^/]+)")
    def volumes_delete(self, name):
        try:
            self.engine.remove_volume(unquote(name))
        except NotFound:
            if not self.flag("force"):
                raise
        self.send_json(204, None)

    @route("POST", r"/volumes/prune")
    def volumes_prune(self):
        filters = self.filters(("all", "label"))
        everything = one_boolean(filters, "all") is True
        deleted, reclaimed = [], 0
        for volume in self.engine.volumes.list():
            if not (everything or volume.anonymous) or self.engine.volume_users(volume.name):
                continue
            if "label" in filters and not all(label_matches(volume.labels, f) for f in filters["label"]):
                continue
            size = dir_size(volume.mountpoint)
            try:
                self.engine.remove_volume(volume.name)
            except Conflict:
                continue  # a container took it meanwhile
            deleted.append(volume.name)
            reclaimed += size
        self.send_json(200, {"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed})

    # ------------------------------------------------------------------ disk usage

    @route("GET", r"/system/df")
    def system_df(self):
        from sandbox.api import container_summary
        engine = self.engine
        containers = engine.list()
        counts = container_counts(engine)
        images = images_by_id(engine)
        users = {}  # chain id -> how many images have that layer
        for image, _ in images:
            for path in image.layers:
                users[path.name] = users.get(path.name, 0) + 1
        layer_sizes = {path.name: layer_size(path) for image, _ in images for path in image.layers}
        image_rows = []
        for image, tags in images:
            row = image_summary(image, tags, counts.get(image.id, 0))
            row["SharedSize"] = sum(layer_sizes[p.name] for p in image.layers if users[p.name] > 1)
            image_rows.append(row)
        container_rows = []
        for c in containers:
            row = container_summary(c)
            upper = c.rw_dir / "upper"
            row["SizeRw"] = dir_size(upper) if upper.is_dir() else 0
            row["SizeRootFs"] = row["SizeRw"] + sum(layer_size(p) for p in c.image.layers)
            # `docker system df -v` counts a container's local volumes from these.
            row.setdefault("Mounts", [{"Type": "volume", "Name": m.volume, "Source": m.source,
                                       "Destination": m.target, "Driver": "local",
                                       "RW": not m.readonly} for m in c.config.mounts if m.volume])
            container_rows.append(row)
        volume_rows = []
        for volume in engine.volumes.list():
            row = volume.to_docker()
            row["UsageData"] = {"Size": dir_size(volume.mountpoint),
                                "RefCount": len(engine.volume_users(volume.name))}
            volume_rows.append(row)
        self.send_json(200, {"LayersSize": sum(layer_sizes.values()), "Images": image_rows,
                             "Containers": container_rows, "Volumes": volume_rows,
                             "BuildCache": [], "BuilderSize": 0})

    # ------------------------------------------------------------------ query helpers

    def filters(self, known: tuple[str, ...]) -> dict[str, list[str]]:
        """``?filters=`` as Docker encodes it: ``{"k": {"v": true}}`` (CLI) or ``{"k": ["v"]}``."""
        raw = self.query.get("filters")
        if not raw:
            return {}
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise ApiError(400, f"invalid filters: not JSON ({raw[:80]!r})") from None
        if not isinstance(decoded, dict):
            raise ApiError(400, "invalid filters: expected a JSON object")
        out: dict[str, list[str]] = {}
        for key, values in decoded.items():
            if key not in known:
                raise ApiError(400, f"invalid filter {key!r} (filters here: {', '.join(known)})")
            if isinstance(values, dict):
                values = [v for v, on in values.items() if on]
            elif isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ApiError(400, f"invalid filter {key!r}: expected a list of strings")
            out[key] = values
        return out


COMMIT_CONFIG_KEYS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels", "ExposedPorts",
                      "Volumes", "StopSignal", "OnBuild")


# ---------------------------------------------------------------------- streams and bodies

class JsonLines:
    """A progress stream whose headers go out with its first line.

    Until then a failure is a plain HTTP error; after, ``fail`` turns it into an
    ``errorDetail`` line. Lines may come from other threads (a RUN step's output),
    so writes are serialized; a client that went away stops the request's own
    thread, and other threads' lines are dropped.
    """

    def __init__(self, handler):
        self.handler = handler
        self.lock = threading.Lock()
        self.owner = threading.get_ident()
        self.gone = False

    def write(self, obj: dict) -> None:
        with self.lock:
            mine = threading.get_ident() == self.owner
            if self.gone:
                if mine:
                    raise BrokenPipeError("the client went away")
                return
            try:
                if not self.handler.streaming:
                    self.handler.start_stream("application/json")
                self.handler.write_json_line(obj)
            except OSError:
                self.gone = True
                if mine:
                    raise

    def finish(self) -> None:
        with self.lock:
            if not self.handler.streaming:
                self.handler.start_stream("application/json")
            self.handler.end_stream()


class LimitedBody:
    """A request body that may be no longer than ``limit`` bytes."""

    def __init__(self, raw, limit: int, what: str):
        self.raw, self.limit, self.what = raw, limit, what
        self.read_bytes = 0
        self.finished = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size is not None and size >= 0 else 1 << 20)
        if not data:
            self.finished = True
            return b""
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise ApiError(413, f"{self.what} is larger than {self.limit // 1024**2} MiB "
                                "(a .dockerignore keeps what the build doesn't need out of it)"
                           if "context" in self.what else
                           f"{self.what} is larger than {self.limit // 1024**2} MiB")
        return data


class EndedTar:
    """A tar stream given the end Python's tarfile needs.

    With ``-f`` outside the context directory, the docker CLI appends the Dockerfile
    to the context tar and stops: no padding after its last 30 bytes, no end-of-archive
    blocks. Go's tar reader takes that EOF as the end; Python's calls it "unexpected
    end of data". Zeros up to the next block and two zero blocks end it properly (a
    complete tar already ends with zero blocks; more change nothing). A compressed
    stream is left alone: the CLI never sends one truncated that way.
    """

    COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.head = b""
        self.ending: bytes | None = None

    def read(self, size: int = -1) -> bytes:
        if self.ending is None:
            data = self.raw.read(size)
            if data:
                if len(self.head) < 6:
                    self.head += data[:6 - len(self.head)]
                self.size += len(data)
                return data
            compressed = any(self.head.startswith(m) for m in self.COMPRESSED)
            self.ending = b"" if compressed else b"\0" * ((-self.size) % 512 + 1024)
        data = self.ending if size is None or size < 0 else self.ending[:size]
        self.ending = self.ending[len(data):]
        return data


class ChunkWriter:
    """A file to write a response body into, sent in chunks of about 64 KiB."""

    def __init__(self, handler, size: int = 1 << 16):
        self.handler, self.size = handler, size
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        if len(self.buffer) >= self.size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.handler.write_chunk(bytes(self.buffer))
            self.buffer.clear()

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.flush()


# ---------------------------------------------------------------------- names

def registry_of(reference: str) -> str | None:
    """The registry host a reference names, or None for Docker Hub (as Docker reads names)."""
    first, sep, _ = reference.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return None
    return None if first in DOCKER_HUB else first


def image_ref(text: str) -> str:
    """An image name or id from a URL, as the store knows it."""
    return familiar(unquote(text))


def new_name(text: str) -> str:
    """A name to give an image: Docker's rules (lower-case repository), with its tag."""
    name = check_reference(familiar(text))
    host = registry_of(name)
    path = name[len(host) + 1:] if host else name
    repository = path.rsplit(":", 1)[0] if ":" in path.rsplit("/", 1)[-1] else path
    if repository != repository.lower():
        raise ApiError(400, f"invalid reference format: repository name ({repository}) must be "
                            "lowercase")
    return name


def familiar(reference: str) -> str:
    """"docker.io/library/busybox:latest" -> "busybox:latest"."""
    for hub in DOCKER_HUB:
        reference = reference.removeprefix(hub + "/")
    return reference.removeprefix("library/")


def with_tag(image: str, tag: str) -> str:
    """fromImage + tag as one reference (the tag may be a digest; the image may have one)."""
    last = image.rsplit("/", 1)[-1]
    if "@" in image or ":" in last or not tag:
        return image if "@" in image or ":" in last else f"{image}:latest"
    return f"{image}@{tag}" if tag.startswith("sha256:") else f"{image}:{tag}"


def reference_matches(pattern: str, tag: str) -> bool:
    """``docker images busybox`` / ``--filter reference=me/*``: the name, or name:tag."""
    pattern = familiar(pattern)
    repo = tag.rsplit(":", 1)[0]
    return fnmatch.fnmatchcase(tag, pattern) or fnmatch.fnmatchcase(repo, pattern)


def label_matches(labels: dict, wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def labels_match(image: Image, wanted: list[str]) -> bool:
    labels = (image.config.get("config") or {}).get("Labels") or {}
    return all(label_matches(labels, w) for w in wanted)


def one_boolean(filters: dict, key: str) -> bool | None:
    values = filters.get(key)
    if not values:
        return None
    if len(values) > 1 or values[0].lower() not in ("true", "false", "1", "0"):
        raise ApiError(400, f"invalid filter {key}={values!r}: expected true or false")
    return values[0].lower() in ("true", "1")


# ---------------------------------------------------------------------- image answers

def images_by_id(engine) -> list[tuple[Image, list[str]]]:
    """Each image once, with all its names (dangling ones have none)."""
    grouped: dict[str, tuple[Image, list[str]]] = {}
    for image in engine.images.list(dangling=True):
        entry = grouped.setdefault(image.id, (image, []))
        if image.name and image.name not in entry[1]:
            entry[1].append(image.name)
    return list(grouped.values())


def container_counts(engine) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in engine.list():
        counts[c.image.id] = counts.get(c.image.id, 0) + 1
    return counts


def image_size(image: Image) -> int:
    return sum(layer_size(p) for p in image.layers)


def image_summary(image: Image, tags: list[str], containers: int) -> dict:
    run = image.config.get("config") or {}
    return {"Id": image.id, "ParentId": "", "RepoTags": sorted(tags), "RepoDigests": [],
            "Created": parse_time(image.config.get("created", "")), "Size": image_size(image),
            "SharedSize": -1, "Labels": run.get("Labels") or {}, "Containers": containers}


def image_inspect(image: Image, tags: list[str]) -> dict:
    config = image.config
    history = config.get("history") or []
    run = {"Hostname": "", "Domainname": "", "User": "", "AttachStdin": False,
           "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
           "StdinOnce": False, "Env": None, "Cmd": None, "Image": "", "Volumes": None,
           "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None}
    run.update(config.get("config") or {})
    layers = [str(p) for p in reversed(image.layers)]  # overlayfs order: top first
    return {
        "Id": image.id, "RepoTags": sorted(tags), "RepoDigests": [], "Parent": "",
        "Container": config.get("container") or "",   # what `docker commit` made it of
        "Comment": (history[-1].get("comment") or "") if history else "",
        "Created": config.get("created") or "0001-01-01T00:00:00Z", "DockerVersion": "",
        "Author": config.get("author") or "", "Config": run,
        "Architecture": config.get("architecture") or "", "Variant": config.get("variant") or "",
        "Os": config.get("os") or "linux", "Size": image_size(image),
        "GraphDriver": {"Name": "overlay2",
                        "Data": {"UpperDir": layers[0], "LowerDir": ":".join(layers[1:])} if layers else {}},
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "ManifestDigest": image.manifest_digest,
    }


def image_history(image: Image, tags: list[str]) -> list[dict]:
    """Newest first; a layer's size for the steps that made one, 0 for config-only steps."""
    layers = iter(image.layers)
    rows = []
    for entry in image.config.get("history") or []:
        size = 0
        if not entry.get("empty_layer"):
            layer = next(layers, None)
            size = layer_size(layer) if layer is not None else 0
        rows.append({"Id": "<missing>", "Created": parse_time(entry.get("created", "")),
                     "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                     "Comment": entry.get("comment", "")})
    rows.reverse()
    if rows:
        # Only the top is an image here; dockerd also names local parents, which Glassbox
        # doesn't keep (as for any pulled image).
        rows[0]["Id"], rows[0]["Tags"] = image.id, sorted(tags) or None
    return rows


_layer_sizes: dict[str, int] = {}
_layer_sizes_lock = threading.Lock()


def layer_size(path) -> int:
    """Bytes of an unpacked layer (each is immutable once unpacked, so counted once)."""
    key = str(path)
    with _layer_sizes_lock:
        if key in _layer_sizes:
            return _layer_sizes[key]
    size = dir_size(path)
    if size or os.path.isdir(key):
        with _layer_sizes_lock:
            _layer_sizes[key] = size
    return size


def parse_time(text: str) -> int:
    """An RFC 3339 time (as image configs hold it) as Unix seconds, UTC."""
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


MAX_VOLUME_FILES = 1000


def volume_files(root, limit: int = MAX_VOLUME_FILES) -> tuple[list[dict], bool]:
    """The entries under a volume's directory, sorted by path, and whether there were
    more than ``limit``. The daemon is root and a container's root wrote these files,
    so every directory is opened with O_NOFOLLOW relative to its parent: a symlink is
    listed, never followed, not even one swapped in for a directory during the walk."""
    found: list[dict] = []
    pending = [""]          # directories still to read, relative to root
    while pending:
        relative = pending.pop()
        try:
            fd = open_below(root, relative)
        except OSError:
            continue        # removed, or no longer a directory, while we looked
        try:
            with os.scandir(fd) as listing:
                entries = sorted(listing, key=lambda e: e.name)
            for entry in entries:
                if len(found) == limit:
                    return sorted(found, key=lambda f: f["Path"]), True
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                        else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
                path = f"{relative}/{entry.name}" if relative else entry.name
                # A name need not be UTF-8; JSON needs it to be.
                shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                found.append({"Path": shown, "Type": kind,
                              "Size": st.st_size if kind in ("file", "symlink") else 0})
                if kind == "dir":
                    pending.append(path)
        finally:
            os.close(fd)
    return sorted(found, key=lambda f: f["Path"]), False


def open_below(root, relative: str) -> int:
    """A directory fd for ``root/relative``, each step opened without following a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    for part in relative.split("/") if relative else []:
        try:
            child = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def dir_size(path) -> int:
    """Bytes of the files under ``path``, each hard-linked file counted once."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total

