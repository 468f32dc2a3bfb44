"""The generic connector: touchpoints posted as JSON by any system you control."""

from connectors.generic.connector import GenericConnector

__all__ = ["GenericConnector"]
