"""pygbot: a self-hosted Discord bot that plays a character with Pygmalion 1.3B."""
