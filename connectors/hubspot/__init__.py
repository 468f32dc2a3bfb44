"""HubSpot connector."""

from connectors.hubspot.connector import HubSpotConnector

__all__ = ["HubSpotConnector"]
