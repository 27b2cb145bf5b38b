#!/usr/bin/env bash
# The PPO benchmark against CleanRL's PPO on a GPU, for a session that has one (its arms include env.async_halves,
# the overlap of envpool's stepping with inference, which costs time on 2 CPU cores): estimated under 10 minutes (not yet
# run on a GPU: no session so far had one).
# Needs CleanRL fetched to /tmp/cleanrl and tyro in /tmp/peer-site (results/BENCHMARKS.md says how).
#   bash benchmarks/gpu.sh > /tmp/gpu-bench.txt
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python benchmarks/ppo_atari_sps.py --device cuda --peer /tmp/cleanrl/cleanrl/ppo_atari_envpool.py \
  --peer-pythonpath /tmp/peer-site --steps 16384 --repeats 2
