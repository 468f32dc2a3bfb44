"""Zendesk connector."""

from connectors.zendesk.connector import ZendeskConnector

__all__ = ["ZendeskConnector"]
