"""A user's model module that fails as it is imported (bnrep must say so in one line)."""

raise RuntimeError("CONFIG_PATH is not set")
