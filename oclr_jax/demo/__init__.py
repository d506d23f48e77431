"""The one-command demo: `python -m oclr_jax.demo [--video clip.mp4] [--checkpoint CKPT]`.

  run.py      the clip (synthetic or a video with OpenCV DIS flow), prediction and scores.
  report.py   the HTML page, MP4/GIF, preview and mask files it writes.
"""
