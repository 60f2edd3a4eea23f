"""Convergence of experiments/detection/yolo_shapes.py: COCO AP on the shapes validation split and
wall time, trained from scratch.

Run:  ./launch.sh bench yolo_shapes [PRESET]   (writes benchmarks/results/yolo_shapes[_PRESET].json)
"""

from benchmarks.convergence.shapes_detection import main

if __name__ == "__main__":
    main("yolo_shapes")
