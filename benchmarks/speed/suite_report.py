"""The README's performance section, rendered from the speed suite's results.

    ./launch.sh bench suite_report     (rewrites the section from benchmarks/results/suite_*.json)

The section sits between ``<!-- suite:begin -->`` and ``<!-- suite:end -->``: per machine a
header line, the table of train steps and the lines of the other measurements. The suite runs
this after measuring, so GPU figures join the CPU ones once a GPU run has been made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.speed.suite_steps import CASES

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


def _before_after_line(result: dict | None, title: str, before: str, after: str) -> list[str]:
    """README lines of a `before_after` result (none when it was not measured)."""
    if not result:
        return []
    return ["", f"{title}: " + "; ".join(
        f"{k} {v[f'{before}_s'] * 1e3:.0f} -> {v[f'{after}_s'] * 1e3:.0f} ms "
        f"({v['speedup']:.2f}x)" for k, v in result.items()) + "."]


def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def render(results: list[dict]) -> str:
    """The section's markdown for the suite results ``results`` (one per backend)."""
    lines = []
    for r in results:
        m, peak = r["machine"], r.get("matmul_peak", {})
        where = (f"{m['device_kind']} ({m['backend']})" if m["backend"] != "cpu"
                 else f"{m['cpu']}, {m['cpu_cores']} cores")
        lines += [f"**{where}** — {m['date']}, jax {m['jax']}, torch {m.get('torch', 'absent')} "
                  f"({m.get('torch_threads', '–')} threads), XLA_FLAGS "
                  f"`{m['xla_flags'] or '(none)'}`, load average {m['load_average'][0]}. "
                  f"Matmul peak {_fmt(peak.get('peak_flops', 0) / 1e9, '.0f')} GFLOP/s "
                  f"(jitted XLA {_fmt(peak.get('xla_flops', 0) / 1e9, '.0f')}, numpy "
                  f"{_fmt(peak.get('numpy_flops') and peak['numpy_flops'] / 1e9, '.0f')}; "
                  f"{peak.get('dtype')} {peak.get('n')}²).", "",
                  "| train step | ours ms | PyTorch eager ms | speed vs PyTorch | GFLOP/step | MFU "
                  "| compile s | peak memory MB | top op categories (share of traced time) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name in CASES:
            c = r["cases"].get(name)
            if not c:
                continue
            ops = ", ".join(f"{k} {v:.0%}" for k, v in list(c["op_time_shares"].items())[:3])
            lines.append(
                f"| {name} | {c['ours_s'] * 1e3:.0f} | "
                f"{_fmt(c['torch_s'] and c['torch_s'] * 1e3, '.0f')}"
                f" | {_fmt(c['speed_ratio'], '.2f')}x | {c['flops'] / 1e9:.1f} | "
                f"{_fmt(c['mfu'], '.2f')} | {c['compile_s']:.1f} | "
                f"{_fmt(c['memory_bytes'] and c['memory_bytes'] / 2**20, '.0f')} | "
                f"{ops or '–'} |")
        if r.get("pipeline"):
            lines += ["", "Input pipeline (real pipeline vs cached batch, per step): " + "; ".join(
                f"{k} {v['real_s'] * 1e3:.0f} vs {v['cached_s'] * 1e3:.0f} ms "
                f"({v['slowdown']:+.1%}; host CPU {v['host_cpu_s_per_batch'] * 1e3:.0f} ms "
                "per batch)" for k, v in r["pipeline"].items()) + "."]
        lines += _before_after_line(
            r.get("barrier"), "Gradient barriers (`mlx_research.nn.barrier`) kept through XLA "
            "CPU's fusion against dropped (the step before them)", "dropped", "kept")
        lines += _before_after_line(
            r.get("rng"), "Dropout masks from `rng_impl=\"hash32\"` instead of threefry",
            "threefry", "hash32")
        if r.get("xla_flags"):
            lines += ["", "XLA CPU flags (our step, default flags time / with the flags): "
                      + "; ".join(f"{k} `{v['flags']}` {v['speedup']:.2f}x"
                                  for k, v in r["xla_flags"].items()) + "."]
        lines.append("")
    return "\n".join(lines).rstrip()


def update_readme() -> None:
    """Rewrites the README's section from every ``benchmarks/results/suite_*.json`` and prints
    it."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("suite_*.json"))]
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README has no {BEGIN} ... {END} section; not updated")
        return
    head, rest = text.split(BEGIN, 1)
    body = render(results)
    README.write_text(f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}")
    print(body)


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    update_readme()


if __name__ == "__main__":
    main()
