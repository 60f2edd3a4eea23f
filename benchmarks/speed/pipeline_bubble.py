"""Step time of the pipelined seq2seq Transformer vs the number of GPipe micro-batches.

    python -m benchmarks.speed.pipeline_bubble        (or ./launch.sh bench pipeline_bubble)

Runs the trainer's jitted train step with mesh stage=4 x data=2 on 8 fake CPU devices (a
subprocess) for M = 1, 2, 4, 8 micro-batches, next to the theoretical GPipe bubble fraction
(S - 1) / (M + S - 1). Writes benchmarks/results/pipeline_bubble.json and prints a markdown table.

On fake CPU devices all "stages" share the host's cores, so idle stages free no hardware and the
measured times show the schedule's cost (M + S - 1 loop iterations of smaller micro-batches), not
the bubble's idle time that real accelerators would waste.
"""

import argparse
import json

from benchmarks.common import write_result
from mlx_research.testing import run_with_devices

NUM_STAGES = 4
MICROBATCHES = (1, 2, 4, 8)

_SNIPPET = """
import json, tempfile, time
import jax, numpy as np
from benchmarks.common import median_seconds
from experiments.parallel.pp import get_config
from mlx_research.train.trainer import Trainer

rows = []
for micro in {microbatches}:
    c = get_config()
    c.mesh.update(data=2, model=1, stage={stages})
    c.model.update(num_encoder_layers=4, num_decoder_layers=4, pipeline_microbatches=micro)
    c.batch_size = 64
    t = Trainer(c, tempfile.mkdtemp())
    src = t.task.train_source()
    batch = {{k: np.stack([src[i][k] for i in range(c.batch_size)]) for k in src[0]}}
    holder = [t.fresh_state(0)]

    def step():
        holder[0], metrics = t.train_step(holder[0], batch)
        jax.block_until_ready(metrics)

    with t.mesh_context():
        batch = jax.device_put(batch, t.batch_sharding)
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
        step_s = median_seconds(step, 10)
    t.close()
    rows.append(dict(microbatches=micro, step_ms=1e3 * step_s, first_step_s=compile_s))
print(json.dumps(rows))
"""


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    from mlx_research.parallel.pipeline import bubble_fraction

    code = _SNIPPET.format(microbatches=MICROBATCHES, stages=NUM_STAGES)
    rows = json.loads(run_with_devices(code, num_devices=8, timeout=1800).strip().splitlines()[-1])
    for row in rows:
        row["bubble_fraction"] = bubble_fraction(NUM_STAGES, row["microbatches"])
    result = dict(
        setup=dict(devices="8 fake CPU devices", mesh=dict(data=2, model=1, stage=NUM_STAGES),
                   model="experiments/parallel/pp.py with 4+4 layers, d_model 64",
                   batch_size=64, timing="median of 10 steps after the compiling one"),
        rows=rows,
    )
    write_result("pipeline_bubble", result)
    print(f"| micro-batches M | step time (ms) | bubble (S-1)/(M+S-1), S={NUM_STAGES} |")
    print("|---:|---:|---:|")
    for row in rows:
        print(f"| {row['microbatches']} | {row['step_ms']:.1f} | {row['bubble_fraction']:.3f} |")


if __name__ == "__main__":
    main()
