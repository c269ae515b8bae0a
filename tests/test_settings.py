"""Config parsing: the TOML contract of DESIGN.md and its error messages.

Pure parsing, no HTTP: these are unit tests of ``gateway.settings`` on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings, parse_settings
from gateway.tenancy import TenantDirectory, hash_api_key
from providers.base import ProviderName

GOOD = {
    "server": {"port": 8080, "graphiql": False},
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
