"""Convergence of experiments/detection/faster_rcnn_shapes.py: COCO AP on the shapes validation
split and wall time, trained from scratch.

Run:  ./launch.sh bench faster_rcnn_shapes [PRESET]
      (writes benchmarks/results/faster_rcnn_shapes[_PRESET].json)
"""

from benchmarks.convergence.shapes_detection import main

if __name__ == "__main__":
    main("faster_rcnn_shapes")
