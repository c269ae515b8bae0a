# OrgGraph gateway (and sandboxes): one image, the command picks the role.
# BASE_IMAGE: an image with python3 (3.11+) and its venv module. The default is the official
# Python image; deploy/compose/build-base.sh makes one from Debian's own packages where no image
# registry is reachable (deploy/compose/offline.yml passes it here).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# WHEELS=1: install from deploy/compose/wheels only (filled on the host by
# deploy/compose/check.py), never from an index. Otherwise pip reaches PyPI.
ARG WHEELS=
COPY deploy/compose/wheels /wheels
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY providers /src/providers
RUN python3 -m venv /opt/orggraph \
 && if [ -n "$WHEELS" ]; then set -- --no-index --find-links /wheels; else set --; fi \
 && /opt/orggraph/bin/pip install --no-cache-dir --disable-pip-version-check "$@" /src

# The venv alone, without the wheels, the sources or pip's build leftovers.
FROM ${BASE_IMAGE}
COPY --from=build /opt/orggraph /opt/orggraph
ENV PATH=/opt/orggraph/bin:$PATH
RUN useradd --system orggraph
WORKDIR /app
USER orggraph
EXPOSE 8000
# No default config: a container must be given one (--config or ORGGRAPH_CONFIG). Demo mode
# (no config, an open tenant) would refuse a public address anyway unless --demo is added.
CMD ["orggraph", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/config/orggraph.toml"]
