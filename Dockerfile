# Clinical image adapter: HTTP API (FHIR R4/R5, POST /photos, DICOMweb) on 8080, DICOM SCP on 11112,
# data in /data. README.md, "Deploy with Docker", says how to run it; in short:
# Build: docker build -t clinical-image-adapter .
# Run:   docker run -d --name adapter --stop-timeout 130 \
#          -p 127.0.0.1:8080:8080 -p 10.0.0.7:11112:11112 -v adapter-data:/data \
#          -v /etc/clinical-image-adapter/mappings:/app/mappings:ro \
#          -v /etc/clinical-image-adapter/pseudonym.key:/run/secrets/adapter_pseudonym_key:ro \
#          -e ADAPTER_PSEUDONYM_KEY_FILE=/run/secrets/adapter_pseudonym_key \
#          -e ADAPTER_DICOM_ALLOWED_AE_TITLES=PACS@10.0.0.20 clinical-image-adapter
#        The image runs in production (ADAPTER_ENVIRONMENT=production): it refuses to start without
#        the organisation's policy (a folder with policy.yaml and the mapping tables mounted at
#        /app/mappings, or ADAPTER_POLICY) and a pseudonym key (from a file, not -e: `docker inspect`
#        shows the environment). The example policy the image carries is used only where asked for:
#        -e ADAPTER_ENVIRONMENT=development to try the image (or ADAPTER_POLICY naming it).
#        The HTTP API authenticates no caller (README, "Before you deploy"): it listens on 0.0.0.0
#        inside the container, so publish it on the host's loopback (or only to the gateway in front
#        of it), never as -p 8080:8080, which serves every network the host is on. It answers only
#        requests naming ADAPTER_BASE_URL's host, ADAPTER_ALLOWED_HOSTS, 127.0.0.1/localhost/[::1] at its
#        port (the HEALTHCHECK's) or the address a connection arrived at (others: 421, against DNS
#        rebinding): published on another host port, or behind a gateway forwarding its own name in
#        Host, list that host[:port] in ADAPTER_ALLOWED_HOSTS. The DICOM SCP
#        admits only the calling AE titles listed (none by default), which any peer can claim:
#        publish it only on the address the PACS reaches.
# Health: the HEALTHCHECK asks /health (the process answers): a container is unhealthy when the
#         adapter itself is, not when the database is down (Swarm would replace every replica);
#         a load balancer's or orchestrator's readiness probe wants /health/ready (database, data
#         volume, DICOM SCP; 503 when one fails).
# Base image: PYTHON_IMAGE, a tag by default; pin a digest for change control
#   (docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 adapter \
 && useradd --system --uid 10001 --gid adapter --home-dir /app --shell /usr/sbin/nologin adapter

# Built in /src, removed once installed: the adapter runs as installed (site-packages, and the
# mapping tables with the example policy in /usr/local/share/clinical-image-adapter/mappings), from
# /app, which holds no mappings/ of its own, so the example policy is never taken for the
# organisation's (in production it is refused, and so is a copy of it left unedited: a policy
# naming the example organisation, urn:oid:2.999.1).
WORKDIR /src

# Dependencies first (cached while only code changes): install from the metadata alone, at the
# versions the test suite ran (constraints.txt, made by `make lock`). The package's readme only has
# to exist here: the real one, copied now, would re-install every dependency whenever the
# documentation changes.
# The build backend too (build-constraints.txt): installed at its pinned version and built with
# (--no-build-isolation), since pip's -c reaches no isolated build environment.
COPY pyproject.toml constraints.txt build-constraints.txt ./
RUN pip install -r build-constraints.txt \
 && mkdir -p adapter && echo '__version__ = "0"' > adapter/__init__.py && touch README.md \
 && pip install --no-build-isolation -c constraints.txt '.[postgres]' \
 && pip uninstall -y clinical-image-adapter \
 && rm -rf adapter build *.egg-info README.md

# Then the code and the mapping tables.
COPY README.md LICENSE ./
COPY adapter ./adapter
COPY mappings ./mappings
RUN pip install --no-deps --no-build-isolation '.[postgres]' && cd / && rm -rf /src

WORKDIR /app
# owner only (mode 700): a named volume takes this mode, and the adapter warns of a data folder
# others may read or enter
RUN install -d -m 700 -o adapter -g adapter /data
VOLUME ["/data"]

ENV ADAPTER_ENVIRONMENT=production \
    ADAPTER_HTTP_HOST=0.0.0.0 \
    ADAPTER_HTTP_PORT=8080 \
    ADAPTER_DICOM_HOST=0.0.0.0 \
    ADAPTER_DICOM_PORT=11112 \
    ADAPTER_DATA_DIR=/data

USER adapter
EXPOSE 8080 11112

# start period: a first start after an upgrade may re-index the records before HTTP listens
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('ADAPTER_HTTP_PORT','8080'), timeout=4).read()" || exit 1

CMD ["python", "-m", "adapter", "serve"]
