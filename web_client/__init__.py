"""The nurse's and the physician's pages (plain ES modules, no build step)."""

from web_client.pages import setup

__all__ = ["setup"]
