"""Images, builds and volumes in the daemon's API (the Docker Engine API's routes).

A mixin of the API's handler: every method is a route, registered with ``@route``.
"""
from __future__ import annotations

from sandbox.api_base import ApiError, route
from sandbox.engine import NotFound
from sandbox.volumes import VolumeError


class ImageRoutes:
    # ------------------------------------------------------------------ images

    @route("GET", r"/images/json")
    def images_json(self):
        out = []
        for image in self.engine.images.list():
            size = sum(dir_size(p) for p in image.layers)
            created = image.config.get("created", "")
            out.append({"Id": image.id, "RepoTags": [image.name], "RepoDigests": [],
                        "ParentId": "", "Size": size, "SharedSize": -1, "Labels": {},
                        "Containers": -1, "Created": parse_time(created)})
        self.send_json(200, out)

    # ------------------------------------------------------------------ volumes

    @route("GET", r"/volumes")
    def volumes_list(self):
        self.send_json(200, {"Volumes": [v.to_docker() for v in self.engine.volumes.list()],
                             "Warnings": []})

    @route("POST", r"/volumes/create")
    def volumes_create(self):
        body = self.read_json()
        volume = self.engine.create_volume(body.get("Name") or None, body.get("Labels") or {})
        self.send_json(201, volume.to_docker())

    @route("GET", r"/volumes/([^/]+)")
    def volumes_inspect(self, name):
        try:
            self.send_json(200, self.engine.volumes.get(name).to_docker())
        except VolumeError as exc:
            raise NotFound(str(exc)) from None

    @route("DELETE", r"/volumes/([^/]+)")
    def volumes_delete(self, name):
        self.engine.remove_volume(name)
        self.send_json(204, None)




def parse_time(text: str) -> int:
    import time
    try:
        return int(time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    except ValueError:
        return 0


def dir_size(path) -> int:
    """Bytes of the files under ``path``, each hard-linked file counted once."""
    import os
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
