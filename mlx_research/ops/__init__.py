"""Detection ops: box formats and IoU, box coder, anchors, NMS, RoI pooling/align, sampling,
matching. Pure functions with static shapes, jit- and vmap-compatible."""
