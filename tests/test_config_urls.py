"""Every configured URL is checked where it is read: https (plain http only for this
machine), no credentials inside, a clear message naming the key, exit code 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cx_connector.cli import main
from cx_connector.config import config_from_mapping
from cx_connector.errors import ConfigError
from tests.conftest import TEST_CONNECTORS

#: every URL setting, as (connector, key)
URL_SETTINGS = [("hubspot", "webhook_url"), ("hubspot", "api_base_url"), ("hubspot", "app_url"),
                ("zendesk", "api_base_url"), ("shopify", "api_base_url")]

GOOD = ["https://api.example.com", "https://api.example.com:8443/base/", "http://localhost:8000/webhooks/x",
        "http://127.0.0.1:9/", "http://[::1]:8080", "https://LOCALHOST"]

BAD = {
    "http://api.example.com": "use https://",
    "http://10.0.0.5/webhooks/hubspot": "use https://",
    "ftp://api.example.com": "not a valid URL",
    "api.example.com": "not a valid URL",
    "https://": "not a valid URL",
    "https://host:port/": "not a valid URL",
    "https://admin:Pa55word-zq81@api.example.com": "user name or password",
    "https://Pa55word-zq81@api.example.com": "user name or password",
    "https://:Pa55word-zq81@api.example.com": "user name or password",
    "https://api.example.com/#Pa55word-zq81": "#fragment",
    "https://api.example.com/a b": "spaces",
}


def settings(connector: str, key: str, value: str) -> dict:
    section = dict(TEST_CONNECTORS[connector])
    section[key] = value
    return {"database_url": "sqlite:///x.db", "connectors": {connector: section}}


@pytest.mark.parametrize(("connector", "key"), URL_SETTINGS)
@pytest.mark.parametrize("value", GOOD)
def test_https_and_local_http_urls_are_accepted(connector, key, value):
    config = config_from_mapping(settings(connector, key, value), env={})
    assert getattr(config.connectors[connector], key).rstrip("/") == value.rstrip("/")


@pytest.mark.parametrize(("connector", "key"), URL_SETTINGS)
@pytest.mark.parametrize("value", sorted(BAD))
def test_bad_urls_are_refused_by_key_path_without_repeating_them(connector, key, value):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(settings(connector, key, value), env={})
    assert err.value.problems == [(f"connectors.{connector}.{key}", err.value.problems[0][1])]
    assert BAD[value] in err.value.problems[0][1]
    assert "Pa55word" not in str(err.value)


def test_check_config_exits_2_naming_every_bad_url(tmp_path):
    path = tmp_path / "cx.yaml"
    path.write_text("""
connectors:
  hubspot:
    client_secret: s
    access_token: t
    webhook_url: http://cx.example.com/webhooks/hubspot
    api_base_url: https://user:${TOKEN}@api.hubapi.com
  shopify:
    shop: acme.myshopify.com
    access_token: t
    client_secret: s
    api_base_url: acme.myshopify.com
""")
    result = CliRunner(env={"TOKEN": "T0ken-zq81"}).invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 2
    assert "connectors.hubspot.webhook_url: use https://" in result.stderr
    assert "connectors.hubspot.api_base_url: must not contain a user name or password" in result.stderr
    assert "connectors.shopify.api_base_url: not a valid URL" in result.stderr
    assert "T0ken-zq81" not in result.output
