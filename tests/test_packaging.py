"""`pip install .` (not editable) ships every file the code reads at run time.

The demo reads the connectors' bundled samples and `db upgrade` reads the Alembic
migrations from the installed package; a file left out of the wheel only shows up on a
user's machine. This reads setup.cfg the way setuptools does and checks that every
non-Python file under the two packages is matched by the packaging configuration.
"""

from __future__ import annotations

import configparser
import fnmatch
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).parent.parent


def _config() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _lines(value: str) -> list[str]:
    return [v.strip() for v in value.replace(",", "\n").splitlines() if v.strip()]


def test_every_data_file_is_in_a_discovered_package_and_matched_by_package_data():
    cfg = _config()
    assert cfg["options"]["packages"].strip() == "find_namespace:"
    find = cfg["options.packages.find"]
    packages = set(find_namespace_packages(str(ROOT), include=_lines(find["include"]),
                                           exclude=_lines(find.get("exclude", ""))))
    patterns = {k: _lines(v) for k, v in cfg["options.package_data"].items()}
    data = [p for top in ("cx_connector", "connectors") for p in (ROOT / top).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(p.name == "demo.json" for p in data) and any(p.suffix == ".mako" for p in data)
    for path in data:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        assert package in packages, f"{package} (holding {path.name}) is not a discovered package"
        wanted = patterns.get(package, []) + patterns.get("*", [])
        assert any(fnmatch.fnmatch(path.name, pat) for pat in wanted), \
            f"{path.relative_to(ROOT)} is not matched by [options.package_data]"


def test_license_is_apache_2_and_shipped():
    cfg = _config()
    assert cfg["metadata"]["license"].strip() == "Apache-2.0"
    assert cfg["metadata"]["license_files"].strip() == "LICENSE"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
