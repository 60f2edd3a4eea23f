"""Fully sharded data parallelism (ZeRO-3): parameters and optimizer state split over "data".

Run:     ./launch.sh experiments/parallel/fsdp.py           (any number of devices dividing 64)
CPU:     XLA_FLAGS=--xla_force_host_platform_device_count=8 ./launch.sh experiments/parallel/fsdp.py
Shows:   sharding_rules="fsdp": every parameter's "embed" dimension on "data", so each of N devices
         holds about 1/N of the weights and AdamW moments, gathered per layer when used.
"""

from experiments.seq2seq.reverse import get_config as reverse_config


def get_config(arg: str | None = None):
    """arg: as experiments/seq2seq/reverse.py (e.g. "runlocal")."""
    config = reverse_config(arg)
    config.mesh.update(data=-1, model=1, stage=1)
    config.sharding_rules = "fsdp"
    return config
