"""Box arithmetic in numpy (no Keras): IoU, NMS, weighted merging, weighted boxes fusion."""
