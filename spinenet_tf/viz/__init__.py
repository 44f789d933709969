"""Pictures: the block graph of an architecture."""
