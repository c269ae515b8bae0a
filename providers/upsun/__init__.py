"""Upsun / Platform.sh: the organizations and subscriptions API (adapter + local sandbox)."""
