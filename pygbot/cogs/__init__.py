"""Discord features, one cog per file."""
