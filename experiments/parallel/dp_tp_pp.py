"""Data x tensor x pipeline parallelism on 8 devices: data=2, model=2, stage=2.

Run:     ./launch.sh experiments/parallel/dp_tp_pp.py       (needs exactly 8 devices)
CPU:     XLA_FLAGS=--xla_force_host_platform_device_count=8 ./launch.sh experiments/parallel/dp_tp_pp.py
Shows:   the three kinds composed by config alone: batch over "data", heads/FFN/vocab over
         "model", stacked layers over "stage" (GPipe, 4 micro-batches); same train step code.
"""

from experiments.seq2seq.reverse import get_config as reverse_config


def get_config(arg: str | None = None):
    """arg: as experiments/seq2seq/reverse.py (e.g. "runlocal")."""
    config = reverse_config(arg)
    config.mesh.update(data=2, model=2, stage=2)
    config.model.update(pipeline=True, pipeline_microbatches=4)
    return config
