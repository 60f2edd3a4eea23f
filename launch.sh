#!/usr/bin/env bash
# mlx_research launcher.
#
#   ./launch.sh EXPERIMENT.py[:ARG] [--workdir=DIR] [--mode=train|eval] [--config.KEY=VALUE ...]
#       exit status: 0 done, 1 an error (one line), 75 stopped by SIGTERM/Ctrl-C after saving
#   ./launch.sh test [--fast] [PYTEST_ARGS...] run the test suite (--fast: the unit tier, -m 'not slow')
#   ./launch.sh bench NAME [ARGS...]           run benchmarks/*/NAME.py (or GROUP.NAME)
#
# Multi-host (every host runs the same command; jax.distributed.initialize() finds its peers):
#   ./launch.sh EXPERIMENT.py --tpu=NAME --zone=ZONE [--project=P] [flags]
#       runs on every worker of a Cloud TPU VM (gcloud compute tpus tpu-vm ssh --worker=all);
#       the repository must sit at the same path on each worker (git clone it there first).
#   ./launch.sh EXPERIMENT.py --slurm [flags]
#       inside an allocation (salloc/sbatch): installs once, then `srun` starts one process per
#       SLURM task, each calling jax.distributed.initialize().
#
# The first call creates ./.venv (unless a virtualenv or conda env is active, or MLX_PYTHON
# names an interpreter) and installs the package with its test extra; later calls reuse it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

die() { echo "launch.sh: $*" >&2; exit 2; }

# The module of a benchmark: benchmarks.GROUP.NAME for NAME (the one benchmarks/*/NAME.py) and
# for GROUP.NAME (speed, convergence or parity).
bench_module() {
  [[ "$1" == *.* ]] && { echo "benchmarks.$1"; return; }
  local found=(benchmarks/*/"$1".py)
  [[ -f "${found[0]}" ]] || die "no benchmark $1 (benchmarks/*/$1.py)"
  [[ ${#found[@]} -eq 1 ]] || die "benchmark $1 is ambiguous (${found[*]}); name it GROUP.$1"
  local group="${found[0]#benchmarks/}"
  echo "benchmarks.${group%%/*}.$1"
}

pick_python() {
  if [[ -n "${MLX_PYTHON:-}" ]]; then PY="$MLX_PYTHON"
  elif [[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]]; then PY="$(command -v python)"
  else
    if [[ ! -x .venv/bin/python ]]; then
      command -v python3 >/dev/null || die "python3 not found (Python >= 3.11 needed)"
      python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "Python >= 3.11 needed; python3 is $(python3 --version 2>&1) (set MLX_PYTHON)"
      echo "launch.sh: creating .venv (first use)" >&2
      python3 -m venv .venv || die "could not create .venv with python3 -m venv"
    fi
    PY="$ROOT/.venv/bin/python"
  fi
}

ensure_installed() {
  local stamp=".install-stamp" want
  want="$("$PY" -c 'import hashlib, sys
print(sys.executable, hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()[:16])')"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "launch.sh: installing mlx_research and its dependencies into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install -q --disable-pip-version-check -e ".[test]" || die "pip install failed"
    echo "$want" > "$stamp"
  fi
}

[[ $# -ge 1 ]] || { sed -n '2,18p' "$0"; exit 2; }

case "$1" in
  test)  shift; args=()
         for a in "$@"; do if [[ "$a" == --fast ]]; then args+=(-m "not slow"); else args+=("$a"); fi; done
         pick_python; ensure_installed; exec "$PY" -m pytest ${args[@]+"${args[@]}"} ;;
  bench) shift; [[ $# -ge 1 ]] || die "usage: ./launch.sh bench NAME (benchmarks/*/NAME.py)"
         module="$(bench_module "$1")"; shift; pick_python; ensure_installed
         exec "$PY" -m "$module" "$@" ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
esac

EXPERIMENT="$1"; shift
[[ -f "${EXPERIMENT%%:*}" ]] || die "experiment config not found: ${EXPERIMENT%%:*}"

TPU="" ZONE="" PROJECT="" SLURM=0 WORKDIR="" PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --tpu) TPU="$2"; shift ;;
    --zone=*) ZONE="${1#*=}" ;;
    --zone) ZONE="$2"; shift ;;
    --project=*) PROJECT="${1#*=}" ;;
    --project) PROJECT="$2"; shift ;;
    --slurm) SLURM=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    --workdir=*) WORKDIR="${1#*=}"; [[ -n "$WORKDIR" ]] || die "--workdir is empty" ;;
    --workdir) WORKDIR="${2:-}"; [[ -n "$WORKDIR" ]] || die "--workdir is empty"; shift ;;
    *) PASS+=("$1") ;;
  esac
  shift
done
if [[ -z "$WORKDIR" ]]; then
  name="${EXPERIMENT%%:*}"; name="${name#experiments/}"; name="${name%.py}"
  WORKDIR="workdirs/${name//\//_}"
fi

CMD=(-m mlx_research.main "--config=$EXPERIMENT" "--workdir=$WORKDIR" ${PASS[@]+"${PASS[@]}"})

if [[ -n "$TPU" ]]; then
  [[ -n "$ZONE" ]] || die "--tpu needs --zone"
  remote="cd $(printf %q "$ROOT") && ./launch.sh $(printf '%q ' "$EXPERIMENT" "--workdir=$WORKDIR" ${PASS[@]+"${PASS[@]}"}) --multihost"
  echo "launch.sh: on every worker of TPU $TPU ($ZONE): $remote" >&2
  exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all --command="$remote"
fi

pick_python
ensure_installed
if [[ "$SLURM" == 1 ]]; then
  command -v srun >/dev/null || die "--slurm needs srun on PATH (run inside salloc/sbatch)"
  echo "launch.sh: srun $PY ${CMD[*]} --multihost" >&2
  exec srun "$PY" "${CMD[@]}" --multihost
fi
exec "$PY" "${CMD[@]}"
