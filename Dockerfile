# Glassbox in one image: the daemon and the web app, as `./run` starts them.
#   docker build -t glassbox .
#   docker run --privileged -p 8000:8000 glassbox
# --privileged because the daemon creates namespaces, cgroups and mounts for its containers.
FROM debian:bookworm-slim

# The same Debian packages as scripts/setup.sh (which then finds nothing missing), plus
# ca-certificates for pip to reach PyPI while the image is built.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv \
        busybox-static graphviz runc crun skopeo umoci libseccomp2 iproute2 chromium \
    && rm -rf /var/lib/apt/lists/*

# Outside /root: the web app's workers run as the unprivileged `glassbox` user and read it.
WORKDIR /opt/glassbox
COPY . .
# The virtualenv, /usr/local/bin/glassbox and the `glassbox` user, exactly as on a machine.
RUN scripts/setup.sh

EXPOSE 8000
VOLUME /var/lib/glassbox
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["glassbox", "up", "--host", "0.0.0.0", "--port", "8000"]
