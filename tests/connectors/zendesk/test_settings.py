"""The connectors.zendesk configuration section."""

from __future__ import annotations

import pytest

from connectors.zendesk import ZendeskConnector
from cx_connector.config import config_from_mapping
from cx_connector.errors import ConfigError
from tests.conftest import TEST_CONNECTORS


def load(**section):
    return config_from_mapping({"connectors": {"zendesk": section}}, env={}).connectors["zendesk"]


def test_defaults():
    s = load(**TEST_CONNECTORS["zendesk"])
    assert (s.batch_size, s.csat_scale, s.api_base_url) == (100, 5, "https://acme.zendesk.test")
    assert load(**{**TEST_CONNECTORS["zendesk"], "api_base_url": None}).api_base_url == "https://acme.zendesk.com"


@pytest.mark.parametrize("scale", [2, 3, 5])
def test_csat_scale(scale):
    assert load(**TEST_CONNECTORS["zendesk"], csat_scale=scale).csat_scale == scale


def test_a_wrong_csat_scale_names_its_key():
    with pytest.raises(ConfigError, match=r"connectors\.zendesk\.csat_scale"):
        load(**TEST_CONNECTORS["zendesk"], csat_scale=10)


def test_demo_settings_are_valid():
    s = load(**ZendeskConnector.demo_settings())
    assert s.subdomain == "demo" and s.webhook_secret
