"""Convergence of experiments/detection/detr_shapes.py: COCO AP on the shapes validation split and
wall time, trained from scratch.

Run:  ./launch.sh bench detr_shapes [PRESET]   (writes benchmarks/results/detr_shapes[_PRESET].json)
"""

from benchmarks.convergence import detection_shapes

if __name__ == "__main__":
    detection_shapes("detr_shapes")
