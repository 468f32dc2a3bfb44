"""``python -m cx_connector``: the same as the ``cx-connector`` command."""

from cx_connector.cli import main

main(prog_name="cx-connector")
