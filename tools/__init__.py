"""Build and developer tools (not installed)."""
