"""Shopify connector."""

from connectors.shopify.connector import ShopifyConnector

__all__ = ["ShopifyConnector"]
