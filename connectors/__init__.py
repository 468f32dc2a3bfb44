"""Built-in platform connectors. Each sub-package is one platform behind
:class:`cx_connector.connector.Connector`, registered in the ``cx_connector.connectors``
entry-point group."""
