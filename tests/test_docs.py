"""The README's configuration reference and command table, and the example configuration,
keep up with the code: every key the loader accepts is documented in both places, and
every command is in the command table."""

from __future__ import annotations

from pathlib import Path

import click
from marshmallow import Schema, fields

from cx_connector import registry
from cx_connector.cli import main
from cx_connector.config import ConfigSchema

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
REFERENCE = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
COMMANDS = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
EXAMPLE = (ROOT / "config" / "cx-connector.example.yaml").read_text()


def _leaf_keys(schema: type[Schema], prefix: str = "") -> list[str]:
    out = []
    for name, field in schema._declared_fields.items():
        if isinstance(field, fields.Nested):
            nested = field.nested
            out += _leaf_keys(nested if isinstance(nested, type) else type(nested), f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_core_key_is_in_the_reference_table_and_the_example():
    keys = [k for k in _leaf_keys(ConfigSchema) if k != "connectors" and not k.startswith("scoring.")]
    assert "privacy.export_dir" in keys and "webhooks.max_body_bytes" in keys
    for key in keys:  # (scoring keys: tests/test_config.py)
        assert f"`{key}`" in REFERENCE, f"{key} missing from the README's configuration reference"
        assert f"{key.rsplit('.', 1)[-1]}:" in EXAMPLE, f"{key} missing from the example config"


def test_every_connector_setting_is_in_its_reference_row_and_the_example():
    for name, cls in registry.available().items():
        [row] = [line for line in REFERENCE.splitlines() if line.startswith(f"| `connectors.{name}`")]
        section = EXAMPLE.split(f"\n  {name}:\n", 1)[1].split("\n\n", 1)[0]
        for key in cls.settings_schema._declared_fields:
            assert f"`{key}`" in row, f"connectors.{name}.{key} missing from the reference table"
            assert f"{key}:" in section, f"connectors.{name}.{key} missing from the example config"


def test_every_command_is_in_the_command_table():
    for name, command in main.commands.items():
        assert f"| `{name}" in COMMANDS or f", `{name}" in COMMANDS, f"{name} missing"
        if isinstance(command, click.Group):
            for sub in command.commands:
                assert f"`{name} {sub}" in COMMANDS, f"{name} {sub} missing"


def test_no_leftover_merge_fragments():
    assert "to add to the reference table" not in README
    assert "to add to the command-line table" not in README


def _section(title: str) -> str:
    return README.split(f"\n### {title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_every_shopify_topic_is_in_the_readme_table():
    from connectors.shopify.normalise import HANDLERS

    table = [line for line in _section("Shopify").splitlines() if line.startswith("| `")]
    for topic in HANDLERS:
        assert any(f"`{topic}`" in line.split("|")[1] for line in table), topic


def test_every_zendesk_event_is_in_the_readme_table():
    from connectors.zendesk import normalise

    table = [line.split("|")[1] for line in _section("Zendesk").splitlines()
             if line.startswith("| `") or line.startswith("| trigger")]
    for action in normalise._TICKET_EVENTS:
        assert any(f"ticket.{action}" in cell or f"`{action}`" in cell for cell in table), action
    for action in normalise.USER_ACTIONS:
        assert any(f"user.{action}" in cell or f"`{action}`" in cell or f"/ `{action}`" in cell
                   for cell in table), action


def test_every_relative_link_in_the_docs_points_at_a_file():
    import re

    broken = []
    for page in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
