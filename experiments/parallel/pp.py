"""Pipeline parallelism: encoder and decoder layer stacks cut into 2 GPipe stages, 4 micro-batches.

Run:     ./launch.sh experiments/parallel/pp.py             (needs an even number of devices)
CPU:     XLA_FLAGS=--xla_force_host_platform_device_count=8 ./launch.sh experiments/parallel/pp.py
Shows:   mesh stage=2 (data = the rest): layer weights stacked on a "layers" axis sharded over
         "stage", each stage runs its layers on 4 micro-batches in turn; bubble fraction
         (S - 1) / (M + S - 1) = 1/5 (benchmarks/speed/pipeline_bubble.py measures it).
"""

from experiments.seq2seq.reverse import get_config as reverse_config


def get_config(arg: str | None = None):
    """arg: as experiments/seq2seq/reverse.py (e.g. "runlocal")."""
    config = reverse_config(arg)
    config.mesh.update(data=-1, model=1, stage=2)
    config.model.update(pipeline=True, pipeline_microbatches=4)
    return config
