"""Things shared by two or more lumenkit systems: errors, device, seeding, safe I/O, images, metrics."""
from lumenkit.common.errors import LumenkitError

__all__ = ["LumenkitError"]
