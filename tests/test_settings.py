"""Config parsing: the TOML contract of DESIGN.md and its error messages.

Pure parsing, no HTTP: these are unit tests of ``gateway.settings`` on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings, parse_settings
from gateway.tenancy import TenantDirectory, hash_api_key
from providers.base import ProviderName

GOOD = {
    "server": {"port": 8080, "graphiql": False, "metrics": False},
    "cache": {"backend": "none"},
    "providers": {
        "capydb": {"base_url": "http://127.0.0.1:1/api/capydb", "timeout_seconds": 2},
        "upsun": {"base_url": "http://127.0.0.1:2", "token_url": "http://127.0.0.1:3/oauth2/token"},
    },
    "tenants": {
        "acme": {
            "api_keys": [hash_api_key("k1")],
            "credentials": {
                "capydb": {"api_key": "env:TEST_CAPY_KEY"},
                "upsun": {"api_token": "tok"},
            },
        }
    },
}


def test_good_config_with_env_values() -> None:
    settings = parse_settings(GOOD, env={"TEST_CAPY_KEY": "capy_live_sandbox_x"})
    assert settings.server.port == 8080 and settings.server.graphiql is False
    assert settings.server.metrics is False
    assert parse_settings({**GOOD, "server": {}}, env={"TEST_CAPY_KEY": "k"}).server.metrics
    assert settings.providers[ProviderName.CAPYDB].base_url == "http://127.0.0.1:1/api/capydb"
    assert settings.providers[ProviderName.CAPYDB].timeout_seconds == 2
    (tenant,) = settings.tenants
    assert tenant.credentials[ProviderName.CAPYDB]["api_key"] == "capy_live_sandbox_x"
    directory = TenantDirectory(settings.tenants)
    assert directory.authenticate("Bearer k1").name == "acme"
    assert directory.authenticate("bearer  k1 ").name == "acme"


def _with(path: str, value: object) -> dict:
    import copy

    data = copy.deepcopy(GOOD)
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "tenants.acme.credentials.capydb",
            {"api_key": "env:NOT_SET_ANYWHERE"},
            "NOT_SET_ANYWHERE",
        ),
        ("tenants.acme.credentials.upsun", {"token": "secret-value"}, "upsun credentials need"),
        ("tenants.acme.credentials.nope", {"x": "y"}, "unknown provider 'nope'"),
        ("tenants.acme.api_keys", ["plain-text-key"], "api_keys[0]"),
        ("tenants.acme.api_keys", [], "api_keys"),
        ("providers.capydb.base_url", "ftp://x", "base_url"),
        ("providers.capydb.timeout_seconds", 0, "timeout_seconds"),
        ("providers.capydb.token_url", "http://x", "token_url only applies"),
        ("providers.capydb.colour", "blue", "unknown key(s) colour"),
        ("providers.capydb", None, "no [providers.capydb]"),
        ("server.port", True, "server.port"),
        ("server.workers", 0, "workers"),
        ("cache.backend", "redis", "cache.url"),
        ("cache.ttl_seconds", -1, "ttl_seconds"),
        ("server.cors_origins", "https://a.example", "cors_origins"),
        ("server.cors_origins", ["https://a.example/path"], "cors_origins"),
        ("server.cursor_secret", "short", "cursor_secret must be at least 16"),
        ("server.max_body_bytes", 10, "max_body_bytes must be at least 100"),
        ("server.max_upstream_calls", -1, "max_upstream_calls must not be negative"),
        ("server.max_aliases", "30", "server.max_aliases has the wrong type"),
        ("tenants.acme.rate_limit_per_minute", 0, "rate_limit_per_minute must be at least 1"),
        ("tenants.acme.burst", 5, "burst needs rate_limit_per_minute"),
        ("tenants.acme.colour", "blue", "unknown key(s) colour"),
        ("server.deadline_seconds", 0, "deadline_seconds"),
        ("providers.capydb.retries", -1, "providers.capydb.retries must be at least 0"),
        ("providers.capydb.retries", 1.5, "providers.capydb.retries has the wrong type"),
        ("providers.capydb.max_concurrency", 0, "max_concurrency must be at least 1"),
        ("providers.capydb.breaker_cooldown_seconds", -1, "breaker_cooldown_seconds"),
        ("providers.capydb.rate_limit_per_minute", "600", "rate_limit_per_minute"),
    ],
)
def test_bad_configs_name_the_problem_and_never_the_secret(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(_with(path, value), env={"TEST_CAPY_KEY": "capy_live_sandbox_x"})
    assert message in str(err.value)
    assert "secret-value" not in str(err.value)


def test_shared_api_key_between_tenants_is_refused() -> None:
    data = _with("tenants.other", {"api_keys": [hash_api_key("k1")]})
    with pytest.raises(ConfigError, match="shared with another tenant"):
        parse_settings(data, env={"TEST_CAPY_KEY": "x"})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "Token k1", "k1"])
def test_authentication_failures(header: str | None) -> None:
    from gateway.errors import ErrorCode, GatewayError

    directory = TenantDirectory(parse_settings(GOOD, env={"TEST_CAPY_KEY": "x"}).tenants)
    with pytest.raises(GatewayError) as err:
        directory.authenticate(header)
    assert err.value.code is ErrorCode.UNAUTHENTICATED


def test_hardening_keys_are_read() -> None:
    data = _with("server.cors_origins", ["https://dash.example.com/"])
    data["server"].update(
        max_aliases=5,
        max_selections=50,
        max_body_bytes=5000,
        max_query_bytes=4000,
        max_upstream_calls=7,
        cursor_secret="env:TEST_CURSOR_SECRET",
    )
    data["tenants"]["acme"].update(rate_limit_per_minute=60, burst=5)
    settings = parse_settings(
        data, env={"TEST_CAPY_KEY": "x", "TEST_CURSOR_SECRET": "0123456789abcdef0123"}
    )
    server = settings.server
    assert server.cors_origins == ("https://dash.example.com",)
    assert (server.max_aliases, server.max_selections, server.max_upstream_calls) == (5, 50, 7)
    assert (server.max_body_bytes, server.max_query_bytes) == (5000, 4000)
    assert server.cursor_secret == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(server)
    (tenant,) = settings.tenants
    assert (tenant.rate_limit_per_minute, tenant.burst) == (60, 5)
    defaults = parse_settings(GOOD, env={"TEST_CAPY_KEY": "x"})
    assert defaults.server.max_upstream_calls == 50 and defaults.server.max_aliases == 30
    assert defaults.server.cors_origins == () and defaults.server.cursor_secret is None
    assert defaults.tenants[0].rate_limit_per_minute is None


def test_resilience_keys_are_read() -> None:
    data = _with("providers.capydb.retries", 0)
    data["providers"]["capydb"].update(
        breaker_failures=3,
        breaker_cooldown_seconds=7,
        rate_limit_per_second=4,
        rate_limit_per_minute=100,
        max_concurrency=8,
    )
    data["server"]["deadline_seconds"] = 2.5
    settings = parse_settings(data, env={"TEST_CAPY_KEY": "x"})
    capydb = settings.providers[ProviderName.CAPYDB]
    assert (capydb.retries, capydb.breaker_failures, capydb.breaker_cooldown_seconds) == (0, 3, 7.0)
    assert (capydb.rate_limit_per_second, capydb.rate_limit_per_minute) == (4, 100)
    assert capydb.max_concurrency == 8
    assert settings.server.deadline_seconds == 2.5
    upsun = settings.providers[ProviderName.UPSUN]
    assert (upsun.retries, upsun.breaker_failures, upsun.breaker_cooldown_seconds) == (2, 5, 30.0)
    assert parse_settings(GOOD, env={"TEST_CAPY_KEY": "x"}).server.deadline_seconds == 10.0


def test_log_format_and_metrics_port_are_read() -> None:
    env = {"TEST_CAPY_KEY": "x"}
    default = parse_settings(GOOD, env=env).server
    assert default.log_format is None and default.metrics_port is None
    server = {"port": 8080, "log_format": "text", "metrics_port": 9100}
    settings = parse_settings({**GOOD, "server": server}, env=env).server
    assert settings.log_format == "text" and settings.metrics_port == 9100
    assert parse_settings({**GOOD, "server": {"log_format": "json"}}, env=env).server.log_format


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"log_format": "xml"}, 'server.log_format must be "json" or "text"'),
        ({"log_format": "JSON"}, 'server.log_format must be "json" or "text"'),
        ({"log_format": 1}, "server.log_format has the wrong type"),
        ({"metrics_port": 0}, "server.metrics_port must be between 1 and 65535"),
        ({"metrics_port": 65536}, "server.metrics_port must be between 1 and 65535"),
        ({"metrics_port": True}, "server.metrics_port has the wrong type"),
        ({"metrics_port": "9100"}, "server.metrics_port has the wrong type"),
        ({"port": 9100, "metrics_port": 9100}, "server.metrics_port must differ from server.port"),
        ({"metrics_port": 8000}, "server.metrics_port must differ from server.port"),
        ({"metrics": False, "metrics_port": 9100}, "metrics_port needs server.metrics = true"),
    ],
)
def test_bad_log_format_and_metrics_port_are_refused(
    server: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**GOOD, "server": server}, env={"TEST_CAPY_KEY": "x"})
    assert message in str(err.value)
