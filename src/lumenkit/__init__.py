"""lumenkit: computational image and video synthesis (diffusion, t2i, video, longexp, gsir)."""
import os as _os

# OpenCV reads EXR only when this is set before cv2 is first imported.
_os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
# OpenMP threads that spin while waiting make torch 3-5x slower on a busy 2-core machine; only
# effective when set before torch is first imported (the CLI imports lumenkit first).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
