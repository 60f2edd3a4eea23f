"""Convergence of experiments/detection/detr_shapes.py: COCO AP on the shapes validation split and
wall time, trained from scratch.

Run:  ./launch.sh bench detr_shapes [PRESET]   (writes benchmarks/results/detr_shapes[_PRESET].json)
"""

from benchmarks.convergence.shapes_detection import main

if __name__ == "__main__":
    main("detr_shapes")
