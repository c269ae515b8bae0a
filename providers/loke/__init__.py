"""LOKE (hospitality loyalty platform, api.loke.global): OAuth2 client-credentials adapter over
``GET /organizations`` (bare array, ``X-Next-Page`` header pagination) and
``GET /organizations/{id}``, plus a faithful sandbox of both and of the issuer's ``/token``."""
