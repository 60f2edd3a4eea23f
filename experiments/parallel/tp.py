"""Tensor (Megatron) parallelism: attention heads, FFN hidden units and the vocabulary split in 2.

Run:     ./launch.sh experiments/parallel/tp.py             (needs an even number of devices)
CPU:     XLA_FLAGS=--xla_force_host_platform_device_count=8 ./launch.sh experiments/parallel/tp.py
Shows:   mesh model=2 (data = the rest) with the "default" rules: "heads", "mlp" and "vocab" on
         "model", so each device holds about half of every layer's weights and optimizer state.
"""

from experiments.seq2seq.reverse import get_config as reverse_config


def get_config(arg: str | None = None):
    """arg: as experiments/seq2seq/reverse.py (e.g. "runlocal")."""
    config = reverse_config(arg)
    config.mesh.update(data=-1, model=2, stage=1)
    return config
