"""bundle.social: one organization per API key (``GET /api/v1/organization/``), its nullable
Stripe-backed ``subscription`` and its monthly post usage.

``sandbox`` is a Starlette stand-in for the REST API, ``adapter`` the gateway's client for it."""
