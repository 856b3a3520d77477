"""lumenkit: computational image and video synthesis (diffusion, t2i, video, longexp, gsir)."""
import os as _os

# OpenCV reads EXR only when this is set before cv2 is first imported.
_os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

__version__ = "0.1.0"
SYSTEMS = ("diffusion", "t2i", "video", "longexp", "gsir")
