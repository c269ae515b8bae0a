"""CapyDB (managed Postgres): the upstream adapter (``adapter``) and a local sandbox of its
REST API (``sandbox``)."""
