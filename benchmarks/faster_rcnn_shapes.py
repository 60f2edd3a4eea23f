"""Convergence of experiments/detection/faster_rcnn_shapes.py: COCO AP on the shapes validation split and
wall time, trained from scratch.

Run:  ./launch.sh bench faster_rcnn_shapes [PRESET]   (writes benchmarks/results/faster_rcnn_shapes[_PRESET].json)
"""

from benchmarks.convergence import detection_shapes

if __name__ == "__main__":
    detection_shapes("faster_rcnn_shapes")
