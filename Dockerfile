# OrgGraph gateway (and sandboxes): one image, the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
RUN pip install --no-cache-dir . && useradd --system orggraph
USER orggraph
EXPOSE 8000
CMD ["orggraph", "serve", "--host", "0.0.0.0", "--port", "8000"]
