"""Configuration: file lookup, ${VAR} interpolation, validation with key paths, exit code 2."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cx_connector.cli import main
from cx_connector.config import config_from_mapping, load_config
from cx_connector.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "cx-connector.example.yaml"


def problems(raw, env=None):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw, env=env or {})
    return dict(info.value.problems)


def test_defaults():
    c = config_from_mapping({}, env={})
    assert c.database_url == "sqlite:///cx-connector.db"
    assert c.schedule.score_every == timedelta(minutes=15)
    assert c.writeback.dry_run is False
    assert c.connectors == {}
    assert c.webhooks.max_body_bytes == 1024 * 1024


def test_missing_secret_names_key_path():
    p = problems({"connectors": {"shopify": {"shop": "x.myshopify.com", "access_token": "t"}}})
    assert p == {"connectors.shopify.client_secret": "missing"}


def test_unknown_keys_are_errors_at_every_level():
    p = problems({"databse_url": "sqlite://", "schedule": {"score_evry": "5m"},
                  "connectors": {"shopfiy": {}, "generic": {"secret": "x" * 20, "extra": 1}}})
    assert p["databse_url"].startswith("unknown key")
    assert p["schedule.score_evry"].startswith("unknown key")
    assert p["connectors.shopfiy"].startswith("unknown connector")
    assert p["connectors.generic.extra"].startswith("unknown key")


def test_every_problem_reported_at_once():
    p = problems({"schedule": {"score_every": "soon", "sync_every": "-5m"},
                  "admin_token": "short", "database_url": "mysql://x"})
    assert set(p) == {"schedule.score_every", "schedule.sync_every", "admin_token", "database_url"}


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("1h30m", 5400), ("90s", 90), ("2d", 172800),
                                          ("1w", 604800), (45, 45), ("120", 120)])
def test_durations(text, seconds):
    c = config_from_mapping({"schedule": {"sync_every": text}}, env={})
    assert c.schedule.sync_every == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", [float("inf"), float("nan"), "99999999999999999999w", True, "5 minutes"])
def test_impossible_durations_are_config_errors_not_crashes(text):
    p = problems({"schedule": {"score_every": text}})
    assert list(p) == ["schedule.score_every"]


def test_env_interpolation_with_defaults_and_escape():
    env = {"SECRET": "s3cr3t:with#chars", "EMPTY": ""}
    c = config_from_mapping({
        "admin_token": "${ADMIN:-fallback-token-0123456789}",
        "database_url": "sqlite:///${EMPTY:-x}.db",
        "connectors": {"generic": {"secret": "${SECRET}-and-more-$${LITERAL}"}},
    }, env=env)
    assert c.admin_token == "fallback-token-0123456789"
    assert c.database_url == "sqlite:///x.db"
    assert c.connectors["generic"].secret == "s3cr3t:with#chars-and-more-${LITERAL}"


def test_unset_env_var_is_an_error_naming_key_and_variable():
    p = problems({"connectors": {"generic": {"secret": "${GENERIC_SECRET}"}}})
    assert "GENERIC_SECRET" in p["connectors.generic.secret"]


def test_postgres_urls_use_psycopg3():
    c = config_from_mapping({"database_url": "postgres://u:p@h/db"}, env={})
    assert c.database_url == "postgresql+psycopg://u:p@h/db"
    assert "p" in c.secrets()


def test_file_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cx-connector.yaml").write_text("writeback: {dry_run: true}\n")
    (tmp_path / "other.yaml").write_text("writeback: {dry_run: false}\nadmin_token: ${T}\n")
    assert load_config(env={}).writeback.dry_run is True
    env = {"CX_CONNECTOR_CONFIG": str(tmp_path / "other.yaml"), "T": "t" * 20}
    assert load_config(env=env).writeback.dry_run is False
    assert load_config(tmp_path / "cx-connector.yaml", env=env).writeback.dry_run is True


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("connectors:\n  generic: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad, env={})


def test_example_config_is_valid_and_documents_every_key():
    env = {k: "x" * 24 for k in ("CX_ADMIN_TOKEN", "HUBSPOT_CLIENT_SECRET", "HUBSPOT_ACCESS_TOKEN",
                                 "ZENDESK_API_TOKEN", "ZENDESK_WEBHOOK_SECRET", "SHOPIFY_ACCESS_TOKEN",
                                 "SHOPIFY_CLIENT_SECRET", "CX_GENERIC_SECRET", "CX_ALERTS_SECRET")}
    c = load_config(EXAMPLE, env=env)
    assert set(c.connectors) == {"generic", "hubspot", "zendesk", "shopify"}
    text = EXAMPLE.read_text()
    for key in ("database_url", "admin_token", "score_every", "sync_every", "dry_run", "client_secret",
                "access_token", "webhook_url", "api_base_url", "batch_size", "subdomain", "api_token",
                "webhook_secret", "shop", "api_version", "secret"):
        assert f"{key}:" in text


def check_config(tmp_path, text: str):
    """`cx-connector check-config` on a file holding ``text``: the CLI's result."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return CliRunner().invoke(main, ["--config", str(cfg), "check-config"])

def test_cli_exits_2_with_key_path(tmp_path):
    result = check_config(tmp_path, "connectors:\n  shopify:\n    shop: acme.myshopify.com\n"
                                    "    access_token: t\n")
    assert result.exit_code == 2
    assert "connectors.shopify.client_secret: missing" in result.output


def test_cli_check_config_ok_hides_secrets(tmp_path):
    result = check_config(tmp_path, "database_url: postgresql://user:hunter2pass@db/cx\n"
                   "connectors:\n  generic:\n    secret: generic-secret-0123456789\n")
    assert result.exit_code == 0, result.output
    assert "generic" in result.output
    assert "hunter2pass" not in result.output and "generic-secret-0123456789" not in result.output


def test_privacy_and_checkouts_sections():
    c = config_from_mapping({}, env={})
    assert c.privacy.export_dir == "exports"
    assert (c.checkouts.abandon_after, c.checkouts.lookback) == (timedelta(hours=6), timedelta(days=30))
    c = config_from_mapping({"privacy": {"export_dir": "/var/lib/cx/exports"},
                             "checkouts": {"abandon_after": "1h", "lookback": "7d"}}, env={})
    assert c.privacy.export_dir == "/var/lib/cx/exports" and c.checkouts.abandon_after == timedelta(hours=1)
    p = problems({"privacy": {"export_dir": "", "dir": "x"}, "checkouts": {"abandon_after": "later"}})
    assert set(p) == {"privacy.export_dir", "privacy.dir", "checkouts.abandon_after"}
    c = load_config(EXAMPLE, env={k: "x" * 24 for k in (
        "CX_ADMIN_TOKEN", "HUBSPOT_CLIENT_SECRET", "HUBSPOT_ACCESS_TOKEN", "ZENDESK_API_TOKEN",
        "ZENDESK_WEBHOOK_SECRET", "SHOPIFY_ACCESS_TOKEN", "SHOPIFY_CLIENT_SECRET", "CX_GENERIC_SECRET",
        "CX_ALERTS_SECRET")})
    assert c.privacy.export_dir == "exports" and c.checkouts.abandon_after == timedelta(hours=6)
    assert c.connectors["shopify"].max_delivery_age == timedelta(hours=5)


def test_scoring_defaults_and_overrides():
    s = config_from_mapping({}, env={}).scoring
    assert (s.horizon_days, s.min_purchasers, s.cx.half_life_days, s.cx.negative_weight) == (90, 50, 180, 2.0)
    assert s.cx.weights == {"needs_met": 0.4, "ease": 0.3, "enjoyment": 0.3}
    assert s.cross_sell.by == "category" and s.churn.high_below == 30
    s = config_from_mapping({"scoring": {"cx": {"weights": {"ease": 0}}, "cross_sell": {"by": "product"}}},
                            env={}).scoring
    assert s.cx.weights == {"needs_met": 0.4, "ease": 0.0, "enjoyment": 0.3}
    assert s.cross_sell.by == "product"


def test_scoring_mistakes_name_their_key():
    p = problems({"scoring": {"horizon": 90, "cross_sell": {"by": "brand"},
                              "churn": {"high_below": 70, "medium_below": 60},
                              "cx": {"weights": {"needs_met": 0, "ease": 0, "enjoyment": 0}}}})
    assert p["scoring.horizon"].startswith("unknown key")
    assert p["scoring.cross_sell.by"] == "Must be one of: category, product."
    assert p["scoring.churn.high_below"] == "must not be above medium_below"
    assert p["scoring.cx.weights"] == "at least one layer needs a weight above 0"


def test_example_config_documents_every_scoring_key():
    from dataclasses import fields as dc_fields
    from dataclasses import is_dataclass

    from cx_connector.scoring.settings import ScoringSettings
    text = EXAMPLE.read_text()
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    c = load_config(EXAMPLE, env={k: "x" * 24 for k in (
        "CX_ADMIN_TOKEN", "HUBSPOT_CLIENT_SECRET", "HUBSPOT_ACCESS_TOKEN", "ZENDESK_API_TOKEN",
        "ZENDESK_WEBHOOK_SECRET", "SHOPIFY_ACCESS_TOKEN", "SHOPIFY_CLIENT_SECRET", "CX_GENERIC_SECRET",
        "CX_ALERTS_SECRET")})
    assert c.scoring == ScoringSettings()  # the example shows the defaults

    def keys(obj, prefix):
        for f in dc_fields(obj):
            value = getattr(obj, f.name)
            yield f"{prefix}.{f.name}"
            if is_dataclass(value):
                yield from keys(value, f"{prefix}.{f.name}")
    for key in keys(ScoringSettings(), "scoring"):
        assert f"{key.rsplit('.', 1)[1]}:" in text, key
        assert f"`{key}`" in readme or any(f"`{key}" in line for line in readme.splitlines()), key


def test_admin_section():
    from cx_connector.config import Admin

    c = config_from_mapping({}, env={})
    assert c.admin == Admin()
    assert (c.admin.secure_cookie, c.admin.session_lifetime) == ("auto", timedelta(hours=12))
    c = config_from_mapping({"admin": {"secure_cookie": "always", "session_lifetime": "30m"}}, env={})
    assert (c.admin.secure_cookie, c.admin.session_lifetime) == ("always", timedelta(minutes=30))
    p = problems({"admin": {"secure_cookie": "never", "session_lifetime": "0s", "cookie": "x"}})
    assert p == {"admin.secure_cookie": "Must be one of: auto, always.",
                 "admin.session_lifetime": "must be longer than zero",
                 "admin.cookie": "unknown key (misspelt? see config/cx-connector.example.yaml)"}
    text = EXAMPLE.read_text()
    assert "secure_cookie: auto" in text and "session_lifetime: 12h" in text


# --- whole numbers: a fraction is an error, never cut to an integer ------------------------


def _integer_fields(schema, path=""):
    """Every integer field under ``schema``: (key path, field)."""
    from marshmallow import fields as mf

    from cx_connector.alerts.settings import Named
    out = []
    for name, field in schema().fields.items():
        key = f"{path}.{name}" if path else name
        if isinstance(field, mf.Nested):
            out += _integer_fields(type(field.schema), key)
        elif isinstance(field, Named):
            out += _integer_fields(field.schema, f"{key}.<name>")
        elif isinstance(field, mf.Integer):
            out.append((key, field))
    return out


def test_every_integer_setting_refuses_a_fraction():
    """Found by walking the schemas, connectors' sections included: a new integer setting
    declared with marshmallow's Integer (which cuts 90.5 to 90) fails this test."""
    from cx_connector import registry
    from cx_connector.config import ConfigSchema
    from cx_connector.connector import WholeNumber
    found = _integer_fields(ConfigSchema)
    for name, cls in registry.available().items():
        found += _integer_fields(cls.settings_schema, f"connectors.{name}")
    paths = {path for path, _ in found}
    assert {"scoring.horizon_days", "scoring.kpi_window_days", "scoring.min_purchasers",
            "scoring.cross_sell.min_support", "scoring.cross_sell.top_k", "scoring.cx.contacts_per_issue_max",
            "writeback.max_attempts", "webhooks.max_body_bytes", "alerts.max_attempts",
            "alerts.webhooks.<name>.max_per_minute", "alerts.rules.<name>.times",
            "alerts.rules.<name>.detractor_max", "connectors.hubspot.batch_size",
            "connectors.zendesk.csat_scale", "connectors.shopify.graphql_bucket_size"} <= paths
    assert [path for path, field in found if not isinstance(field, WholeNumber)] == []


@pytest.mark.parametrize(("section", "key", "value"), [
    ({"scoring": {"horizon_days": 90.5}}, "scoring.horizon_days", "90.5"),
    ({"scoring": {"kpi_window_days": 30.9}}, "scoring.kpi_window_days", "30.9"),
    ({"scoring": {"cross_sell": {"top_k": 2.5}}}, "scoring.cross_sell.top_k", "2.5"),
    ({"writeback": {"max_attempts": "3.5"}}, "writeback.max_attempts", "3.5"),  # from a ${VAR}
    ({"webhooks": {"max_body_bytes": 1048576.5}}, "webhooks.max_body_bytes", "1048576.5"),
    ({"alerts": {"max_attempts": 1.5}}, "alerts.max_attempts", "1.5"),
])
def test_a_fraction_where_a_whole_number_is_meant_is_an_error(section, key, value):
    assert problems(section) == {key: f"must be a whole number, not {value}"}


def test_a_connector_setting_with_a_fraction_is_an_error():
    from tests.conftest import TEST_CONNECTORS
    zendesk = {**TEST_CONNECTORS["zendesk"], "csat_scale": 5.5, "batch_size": 99.9}  # 5.5 passed OneOf as 5
    assert problems({"connectors": {"zendesk": zendesk}}) == {
        "connectors.zendesk.csat_scale": "must be a whole number, not 5.5",
        "connectors.zendesk.batch_size": "must be a whole number, not 99.9"}


def test_whole_numbers_written_otherwise_are_taken():
    c = config_from_mapping({"scoring": {"horizon_days": "${H}", "kpi_window_days": 30.0},
                             "writeback": {"max_attempts": " 4 "}}, env={"H": "60"})
    assert (c.scoring.horizon_days, c.scoring.kpi_window_days, c.writeback.max_attempts) == (60, 30, 4)
    assert isinstance(c.scoring.kpi_window_days, int)
    assert problems({"scoring": {"horizon_days": "ninety"}}) == {"scoring.horizon_days": "not a whole number"}
    assert problems({"scoring": {"horizon_days": True}}) == {"scoring.horizon_days": "not a whole number"}


def test_check_config_exits_2_on_a_fraction(tmp_path):
    result = check_config(tmp_path, "scoring:\n  horizon_days: 90.5\n")
    assert result.exit_code == 2
    assert "scoring.horizon_days: must be a whole number, not 90.5" in result.output


# --- schedule.full_score_at: YAML 1.1 reads an unquoted 3:30 as the number 210 ----------------


@pytest.mark.parametrize(("yaml_value", "says"), [
    ("3:30", 'use HH:MM (24 h, UTC), in quotes: YAML read this as the number 210 (unquoted, 3:30 is a '
             'base-60 number); write "03:30"'),
    ("23:15", 'YAML read this as the number 1395 (unquoted, 23:15 is a base-60 number); write "23:15"'),
    ("25:00", 'use HH:MM (24 h, UTC), in quotes: YAML read this as the number 1500; write e.g. "03:30"'),
    ("3", 'use HH:MM (24 h, UTC), in quotes: YAML read this as the number 3; write e.g. "03:30"'),
    ('"25:00"', "use HH:MM (24 h, UTC)"),
    ('"3:30"', "use HH:MM (24 h, UTC)"),
])
def test_full_score_at_read_as_a_number_gets_the_hh_mm_hint(tmp_path, yaml_value, says):
    result = check_config(tmp_path, f"schedule:\n  full_score_at: {yaml_value}\n")
    assert result.exit_code == 2
    line = next(x for x in result.output.splitlines() if "schedule.full_score_at" in x)
    assert line.endswith(says), line
    assert "Not a valid string" not in result.output


@pytest.mark.parametrize("yaml_value", ['"03:30"', "03:30", "'23:59'"])  # unquoted 03:30 is a string
def test_full_score_at_accepts_hh_mm(tmp_path, yaml_value):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"schedule:\n  full_score_at: {yaml_value}\n")
    assert load_config(cfg, env={}).schedule.full_score_at == yaml_value.strip("'\"")
