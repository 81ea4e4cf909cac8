"""The classroom registry: the OCI Distribution API (v1.1) under /v2/.

``docker push``/``pull``, skopeo and the glass daemon talk to it as to any registry.
This module turns requests into calls on the store (app/registry_store.py) and decides
who may do what:

- no classroom (``REGISTRY_USERS`` None): one person on their own machine; the registry
  answers loopback clients only, and lets them do everything;
- a classroom: HTTP Basic credentials (also ``Bearer base64(user:password)``). A student
  of classroom C pushes under ``C/<their name>/`` and pulls anything under ``C/``; an
  instructor of C pushes and pulls anything under ``C/``.

Repository names hold slashes, so one catch-all route takes the path and its suffix
(``/blobs/uploads/<id>``, ``/blobs/<digest>``, ``/manifests/<ref>``, ``/tags/list``,
``/referrers/<digest>``) says what is asked.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import re
from typing import BinaryIO
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from .registry_store import (COMPONENT, MAX_MANIFEST, OCI_INDEX, Blob, RegistryError,
                             RegistryStore, Upload, UploadRangeInvalid, check_name, sha256_hex,
                             valid_name)

bp = Blueprint("registry", __name__, url_prefix="/v2")

REALM = "glassbox"
PULL, PUSH = "pull", "push"
ROLES = ("student", "instructor")


# --- who may do what ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class User:
    name: str
    password_sha256: str
    role: str           # "student" | "instructor"
    classroom: str


def load_users(users: dict | None, users_file: str | None = None) -> dict[str, User] | None:
    """``REGISTRY_USERS`` (or the JSON file ``REGISTRY_USERS_FILE``) as Users; None = no classroom."""
    if users is None and users_file:
        with open(users_file) as f:
            users = json.load(f)
    if users is None:
        return None
    loaded = {}
    for name, entry in users.items():
        where = f"registry user {name!r}"
        if not COMPONENT.fullmatch(name):
            raise ValueError(f"{where}: a user name is part of repository names, so lower-case "
                             "letters, digits and . _ - only")
        password = str(entry.get("password", "")).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", password):
            raise ValueError(f"{where}: password must be the sha256 hex digest of the password")
        if entry.get("role") not in ROLES:
            raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}")
        if not COMPONENT.fullmatch(str(entry.get("classroom", ""))):
            raise ValueError(f"{where}: classroom must be one repository path component, e.g. 'c1'")
        loaded[name] = User(name, password, entry["role"], entry["classroom"])
    return loaded


def allowed(user: User | None, action: str, repository: str) -> bool:
    if user is None:
        # No login, from this machine (checked already): anything but a classroom's
        # namespace, which only its members reach.
        namespace = current_app.extensions["registry"].classroom_namespace
        return namespace is None or not namespace(repository.split("/")[0])
    parts = repository.split("/")
    if len(parts) < 2 or parts[0] != user.classroom:
        return False
    return action == PULL or user.role == "instructor" or parts[1] == user.name


def require(action: str, repository: str) -> None:
    user = g.registry_user
    if allowed(user, action, repository):
        return
    if user is None:
        raise RegistryError("DENIED", f"{repository} belongs to a classroom: only its members "
                            "(logged in) may use it", {"repository": repository, "action": action})
    if repository.split("/")[0] != user.classroom:
        message = f"{repository} is outside your classroom {user.classroom}"
    else:
        message = (f"{user.name} may push only under {user.classroom}/{user.name}/, "
                   f"not to {repository}")
    raise RegistryError("DENIED", message, {"repository": repository, "action": action})


def authenticated_user(state: "RegistryState") -> User | None:
    """The user the request's credentials name: one of ``REGISTRY_USERS``, else a member
    of a classroom made in the app (``CLASS/NAME``, see classroom.py)."""
    users = state.users or {}
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    try:
        name, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = users.get(name)
    given = hashlib.sha256(password.encode()).hexdigest()
    # Compared even for an unknown user, so the answer's timing doesn't tell names apart.
    expected = user.password_sha256 if user else "0" * 64
    if hmac.compare_digest(given, expected) and user:
        return user
    if user is None and "/" in name and state.classroom_user is not None:
        return state.classroom_user(name, password)
    return None


def is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@bp.before_request
def authenticate():
    state = current_app.extensions["registry"]
    header = request.headers.get("Authorization")
    if header:
        g.registry_user = authenticated_user(state)
        if g.registry_user is None:
            current_app.logger.info("registry: no valid credentials from %s", request.remote_addr)
            raise RegistryError("UNAUTHORIZED", "authentication required: log in with your "
                                "classroom user name and password")
        return None
    if state.users is None:
        if not is_loopback(request.remote_addr):
            raise RegistryError(
                "DENIED", "this registry has no classroom configured, so it answers only this "
                "machine (loopback); configure REGISTRY_USERS to open it to a classroom")
        g.registry_user = None
        return None
    raise RegistryError("UNAUTHORIZED", "authentication required: log in with your "
                        "classroom user name and password")


# --- the app's side -------------------------------------------------------------------------

@dataclasses.dataclass
class RegistryState:
    store: RegistryStore
    users: dict[str, User] | None
    # Set by classroom.py: (user, password) -> User of a classroom made in the app, and
    # whether a first path component is a classroom's namespace.
    classroom_user: object = None
    classroom_namespace: object = None


def init_app(app: Flask) -> None:
    """Registers the blueprint; the store touches the disk only on the first request."""
    config = app.config
    users = load_users(config["REGISTRY_USERS"], config["REGISTRY_USERS_FILE"])
    store = RegistryStore(config["REGISTRY_ROOT"], max_upload=config["REGISTRY_MAX_UPLOAD"],
                          max_total=config["REGISTRY_MAX_TOTAL"], classrooms=users is not None,
                          max_space=config["REGISTRY_MAX_PER_SPACE"])
    app.extensions["registry"] = RegistryState(store, users)
    app.register_blueprint(bp)


def get_store() -> RegistryStore:
    return current_app.extensions["registry"].store


@bp.after_request
def api_version(response: Response) -> Response:
    response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
    return response


@bp.errorhandler(RegistryError)
def registry_error(error: RegistryError) -> Response:
    response = jsonify(errors=error.errors)
    response.status_code = error.status
    if error.status == 401:
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    if isinstance(error, UploadRangeInvalid):
        response.headers.update(upload_headers(error.upload))
    return response


# --- routes -----------------------------------------------------------------------------------

@bp.get("/")
def base():
    return jsonify({})


@bp.get("/_catalog")
def catalog():
    names = [name for name in get_store().repositories() if allowed(g.registry_user, PULL, name)]
    page, link = paginate(names, "/v2/_catalog")
    return with_link(jsonify(repositories=page), link)


@bp.get("/_glassbox/stats")
def stats():
    """Transfer counters of this process (what moved), for tests, benchmarks and the instructor."""
    user = g.registry_user
    if user is not None and user.role != "instructor":
        raise RegistryError("DENIED", "only an instructor may read the registry's counters")
    store = get_store()
    classroom = user.classroom if user else ""
    return jsonify({**store.stats(), "usage": store.usage(classroom), "max_total": store.max_total})


@bp.route("/<path:path>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def dispatch(path: str):
    for pattern, handlers in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            break
    else:
        raise RegistryError("UNSUPPORTED", f"no such registry endpoint: /v2/{path}", status=404)
    handler = handlers.get(request.method)
    if handler is None:
        raise RegistryError("UNSUPPORTED", f"{request.method} is not supported on /v2/{path}",
                            status=405)
    check_name(match["name"])
    return handler(**match.groupdict())


# --- blobs ----------------------------------------------------------------------------------

def get_blob(name: str, digest: str):
    require(PULL, name)
    store = get_store()
    if request.method == "HEAD":
        blob = store.blob(name, digest)
        response = Response(status=200, mimetype="application/octet-stream")
        response.headers.update(blob_headers(blob))
        response.headers["Content-Length"] = str(blob.size)
        return response
    blob, f = store.open_blob(name, digest)
    response = Response(wrap_file(request.environ, f), mimetype="application/octet-stream",
                        direct_passthrough=True)
    response.content_length = blob.size
    response.headers.update(blob_headers(blob))
    response.set_etag(blob.digest)
    try:
        response = response.make_conditional(request.environ, accept_ranges=True,
                                              complete_length=blob.size)
    except RequestedRangeNotSatisfiable:
        f.close()
        error = RegistryError("UNSUPPORTED", f"Range {request.headers.get('Range')!r} is not in "
                              f"the blob's {blob.size} bytes", status=416)
        response = registry_error(error)
        response.headers["Content-Range"] = f"bytes */{blob.size}"
        return response
    if response.status_code in (200, 206):
        store.count("blob_bytes_served", response.content_length or 0)
    return response


def delete_blob(name: str, digest: str):
    require(PUSH, name)
    get_store().delete_blob(name, digest)
    return accepted()


def blob_headers(blob: Blob) -> dict[str, str]:
    # Content-addressed: a blob never changes, so caches may keep it for good.
    return {"Docker-Content-Digest": blob.digest, "Cache-Control": "max-age=31536000"}


def blob_created(name: str, blob: Blob) -> Response:
    return empty(201, {"Location": f"/v2/{name}/blobs/{blob.digest}",
                       "Docker-Content-Digest": blob.digest})


# --- uploads --------------------------------------------------------------------------------

def start_upload(name: str, upload_id: str | None):
    """POST: a new upload (202), a cross-repository mount (201), or a whole blob at once
    with ``?digest=`` (201)."""
    if upload_id:
        raise RegistryError("UNSUPPORTED", "POST starts an upload: send it to "
                            f"/v2/{name}/blobs/uploads/", status=405)
    require(PUSH, name)
    store = get_store()
    mount, source = request.args.get("mount"), request.args.get("from")
    if mount and source and valid_name(source) and allowed(g.registry_user, PULL, source):
        blob = store.mount_blob(name, mount, source)
        if blob:
            current_app.logger.info("registry: mounted %s from %s into %s", mount, source, name)
            return blob_created(name, blob)
    digest = request.args.get("digest")
    if digest is not None:
        sha256_hex(digest)      # a bad digest is refused before a byte is read
    upload = store.start_upload(name)
    if digest is None:
        return upload_accepted(upload)
    try:
        blob = store.finish_upload(name, upload.id, digest, request_body(),
                                   length=request.content_length)
    except RegistryError:
        try:
            store.cancel_upload(name, upload.id)
        except RegistryError:       # already gone (a wrong digest deletes it)
            pass
        raise
    return blob_created(name, blob)


def upload_status(name: str, upload_id: str | None):
    require(PUSH, name)
    upload = get_store().upload_status(name, upload_id or "")
    return upload_accepted(upload, status=204)


def patch_upload(name: str, upload_id: str | None):
    require(PUSH, name)
    store = get_store()
    start = chunk_start(name, upload_id or "")
    upload = store.append_upload(name, upload_id or "", request_body(), start=start,
                                 length=request.content_length)
    return upload_accepted(upload)


def finish_upload(name: str, upload_id: str | None):
    require(PUSH, name)
    store = get_store()
    digest = request.args.get("digest")
    if not digest:
        raise RegistryError("DIGEST_INVALID", "finish an upload with PUT ...?digest=sha256:<hex>")
    start = chunk_start(name, upload_id or "")
    blob = store.finish_upload(name, upload_id or "", digest, request_body(), start=start,
                               length=request.content_length)
    return blob_created(name, blob)


def cancel_upload(name: str, upload_id: str | None):
    require(PUSH, name)
    get_store().cancel_upload(name, upload_id or "")
    return empty(204)


def request_body() -> BinaryIO:
    # Under gunicorn (wsgi.input_terminated) the raw stream, chunked bodies included.
    return request.stream


def chunk_start(name: str, upload_id: str) -> int | None:
    """Where the chunk begins by its Content-Range (``a-b``), or None without one."""
    value = request.headers.get("Content-Range")
    if not value:
        return None
    match = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?", value.strip())
    start, end = (int(match[1]), int(match[2])) if match else (None, None)
    length = request.content_length
    if match is None or end < start or (length is not None and end - start + 1 != length):
        upload = get_store().upload_status(name, upload_id)
        raise UploadRangeInvalid(upload, f"Content-Range {value!r} is not <first>-<last> of this "
                                 f"chunk; send from byte {upload.size}")
    return start


def upload_headers(upload: Upload) -> dict[str, str]:
    return {"Location": f"/v2/{upload.name}/blobs/uploads/{upload.id}",
            "Range": f"0-{max(upload.size - 1, 0)}",
            "Docker-Upload-UUID": upload.id}


def upload_accepted(upload: Upload, status: int = 202) -> Response:
    return empty(status, upload_headers(upload))


# --- manifests, tags, referrers -------------------------------------------------------------

def get_manifest(name: str, reference: str):
    require(PULL, name)
    manifest = get_store().get_manifest(name, reference)
    response = Response(manifest.data, content_type=manifest.media_type)
    response.headers["Docker-Content-Digest"] = manifest.digest
    response.set_etag(manifest.digest)
    return response


def put_manifest(name: str, reference: str):
    require(PUSH, name)
    if (request.content_length or 0) > MAX_MANIFEST:
        raise RegistryError("SIZE_INVALID", f"manifest too large: at most {MAX_MANIFEST} bytes",
                            status=413)
    data = read_at_most(request_body(), MAX_MANIFEST + 1)
    manifest = get_store().put_manifest(name, reference, data, request.headers.get("Content-Type"))
    headers = {"Location": f"/v2/{name}/manifests/{manifest.digest}",
               "Docker-Content-Digest": manifest.digest}
    if manifest.subject:
        headers["OCI-Subject"] = manifest.subject
    return empty(201, headers)


def delete_manifest(name: str, reference: str):
    require(PUSH, name)
    get_store().delete_manifest(name, reference)
    return accepted()


def tags_list(name: str):
    require(PULL, name)
    page, link = paginate(get_store().tags(name), f"/v2/{name}/tags/list")
    return with_link(jsonify(name=name, tags=page), link)


def referrers(name: str, digest: str):
    require(PULL, name)
    artifact_type = request.args.get("artifactType")
    manifests = get_store().referrers(name, digest, artifact_type)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    response = Response(json.dumps(index), content_type=OCI_INDEX)
    if artifact_type:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    return response


ROUTES = [
    (re.compile(r"(?P<name>.+)/blobs/uploads(?:/(?P<upload_id>[^/]*))?"),
     {"POST": start_upload, "GET": upload_status, "HEAD": upload_status, "PATCH": patch_upload,
      "PUT": finish_upload, "DELETE": cancel_upload}),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
     {"GET": get_blob, "HEAD": get_blob, "DELETE": delete_blob}),
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
     {"GET": get_manifest, "HEAD": get_manifest, "PUT": put_manifest, "DELETE": delete_manifest}),
    (re.compile(r"(?P<name>.+)/tags/list"), {"GET": tags_list}),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)"), {"GET": referrers}),
]


# --- small helpers --------------------------------------------------------------------------

def paginate(items: list[str], path: str) -> tuple[list[str], str | None]:
    """The spec's ``n``/``last`` pagination over a sorted list, and the next page's Link."""
    last = request.args.get("last")
    if last:
        items = [item for item in items if item > last]
    n = request.args.get("n")
    if n is None:
        return items, None
    if not n.isdigit():
        raise RegistryError("UNSUPPORTED", f"n must be a number of entries, not {n!r}", status=400)
    page = items[:int(n)]
    if page and len(items) > len(page):
        return page, f'<{path}?n={n}&last={quote(page[-1], safe="")}>; rel="next"'
    return page, None


def with_link(response: Response, link: str | None) -> Response:
    if link:
        response.headers["Link"] = link
    return response


def accepted() -> Response:
    return empty(202)


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    """An answer without a body (and so without a Content-Type)."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    if status != 204:
        response.headers["Content-Length"] = "0"
    return response


def read_at_most(stream: BinaryIO, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit and (chunk := stream.read(min(1 << 16, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

