"""PlanetScale: the organizations API (``https://api.planetscale.com/v1``) — adapter and sandbox."""
