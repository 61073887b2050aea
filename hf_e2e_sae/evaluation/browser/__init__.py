"""A static, offline feature browser (HTML + script files) built from saved feature statistics."""
from .folder import MARKER, BrowserFolderError, check_browser_folder, claim_browser_folder
from .site import write_site

__all__ = ["write_site", "MARKER", "BrowserFolderError", "check_browser_folder", "claim_browser_folder"]
