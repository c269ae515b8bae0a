# OrgGraph gateway (and sandboxes): one image, the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
RUN pip install --no-cache-dir . && useradd --system orggraph
USER orggraph
EXPOSE 8000
# No default config: a container must be given one (--config or ORGGRAPH_CONFIG). Demo mode
# (no config, an open tenant) would refuse a public address anyway unless --demo is added.
CMD ["orggraph", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/config/orggraph.toml"]
