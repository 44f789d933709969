"""Detection: anchors, box coding, target assignment, losses, NMS, heads, RetinaNet."""
