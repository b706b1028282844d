"""Converters from the original NED / NEST / BERG files to nest-data stores.

Installed as ``nest_data.converters``.  Each converter writes through the package's one
store writer, so converted stores are identical in layout to every other store.
"""

from nest_data.converters.ned import convert_ned, discover_ned

__all__ = ["convert_ned", "discover_ned"]
