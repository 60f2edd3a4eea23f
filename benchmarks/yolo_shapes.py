"""Convergence of experiments/detection/yolo_shapes.py: COCO AP on the shapes validation split and
wall time, trained from scratch.

Run:  ./launch.sh bench yolo_shapes [PRESET]   (writes benchmarks/results/yolo_shapes[_PRESET].json)
"""

from benchmarks.convergence import detection_shapes

if __name__ == "__main__":
    detection_shapes("yolo_shapes")
