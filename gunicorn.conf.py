"""gunicorn reads this file from the working directory (the Procfile's ``web: gunicorn``).

The settings, and why each has its value, are in ``cx_connector/gunicorn_conf.py``, so a
pip-installed cx-connector runs the same ones: ``gunicorn -c python:cx_connector.gunicorn_conf``.
Override a setting below this line, or with ``GUNICORN_CMD_ARGS`` / command-line flags.
"""

from cx_connector.gunicorn_conf import *  # noqa: F403
