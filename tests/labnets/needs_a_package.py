"""A user's model module that imports a package that is not installed (bnrep must name that package)."""

import bnrep_tests_not_installed  # noqa: F401


def net(num_classes, in_channels):
    raise AssertionError("never built: the import fails first")
