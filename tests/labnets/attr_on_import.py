"""A user's model module whose import raises AttributeError (a config attribute it expects): one line, and
not taken for a missing builder."""

import types

CONFIG = types.SimpleNamespace()
WIDTH = CONFIG.width
