"""The HubSpot README section and the example configuration keep up with the code."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from connectors.hubspot.connector import HubSpotSettings
from connectors.hubspot.normalise import HANDLERS

ROOT = Path(__file__).parents[3]
SECTION = (ROOT / "README.md").read_text()
EXAMPLE = (ROOT / "config" / "cx-connector.example.yaml").read_text()


def test_readme_section_names_every_handled_subscription():
    for kind in HANDLERS:
        family = kind.split(".")[1]
        assert f"`{kind}`" in SECTION or f"`*.{family}`" in SECTION, kind


def test_every_setting_is_documented_in_the_section_and_the_example():
    for f in fields(HubSpotSettings):
        assert f"`{f.name}`" in SECTION, f.name
        assert f"{f.name}:" in EXAMPLE, f.name
