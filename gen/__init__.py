"""gen package."""
