"""Data parallelism: the seq2seq reverse task with the batch split over every device.

Run:     ./launch.sh experiments/parallel/dp.py             (any number of devices)
CPU:     XLA_FLAGS=--xla_force_host_platform_device_count=8 ./launch.sh experiments/parallel/dp.py
Shows:   mesh data=-1 (all devices): parameters replicated, one gradient all-reduce per step; the
         same losses as a single-device run (tests/test_parallel_training.py).
"""

from experiments.seq2seq.reverse import get_config as reverse_config


def get_config(arg: str | None = None):
    """arg: as experiments/seq2seq/reverse.py (e.g. "runlocal")."""
    config = reverse_config(arg)
    config.mesh.update(data=-1, model=1, stage=1)
    return config
