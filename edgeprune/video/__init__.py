"""Video: files and cameras in, overlay videos out (:mod:`.io`), per-frame pre/post-processing at
library speed (:mod:`.frames`), live sources (:mod:`.sources`) and the threaded decode → infer →
draw/encode pipeline (:mod:`.pipeline`)."""

from edgeprune.video.io import DEFAULT_FPS, VideoReader, VideoWriter, draw_hud, open_video

__all__ = ["DEFAULT_FPS", "VideoReader", "VideoWriter", "draw_hud", "open_video"]
