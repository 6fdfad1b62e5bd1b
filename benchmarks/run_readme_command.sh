#!/bin/bash
# The README main command on an empty cache, its stage lines timestamped, wall time and peak memory.
#   benchmarks/run_readme_command.sh [CODE_DIR] [TAG]
# CODE_DIR: the toggle source to run (default: this checkout; a `git worktree` of another commit
# compares it side by side); TAG names the cache (/tmp/fc-TAG), run (/tmp/r-TAG) and log
# (/tmp/readme-TAG.log). Run it alone: the load average is printed before and after.
code=${1:-$(cd "$(dirname "$0")/.." && pwd)}
tag=${2:-readme}
rm -rf "/tmp/fc-$tag" "/tmp/r-$tag"
uptime
start=$(date +%s.%N)
( PYTHONPATH=$code /usr/bin/time -v env TOGGLE_CACHE_DIR="/tmp/fc-$tag" python -m toggle search smollm2-135m \
    --budget 100MB --trials 12 --out "/tmp/r-$tag" 2>&1 ) |
  while IFS= read -r line; do printf '%7.1f %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$line"; done > "/tmp/readme-$tag.log"
uptime
grep -E "toggle:|Elapsed|Maximum resident|best plan|held-out audit" "/tmp/readme-$tag.log" | grep -v "profiling [0-9]"
