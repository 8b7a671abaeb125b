"""
podnet's errors. They derive from pyinfra's PyinfraError so the CLI prints the message
(which names the setting, the bad value and what would be valid) without a traceback.
"""

from pyinfra.api.exceptions import PyinfraError


class PodnetError(PyinfraError):
    """Something podnet found wrong before or while changing a host."""


class ResetError(PodnetError, ValueError):
    """A reset that cannot take the pod network off the hosts asked for."""
