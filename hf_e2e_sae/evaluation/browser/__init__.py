"""A static, offline feature browser (HTML + script files) built from saved feature statistics."""
from .site import write_site

__all__ = ["write_site"]
