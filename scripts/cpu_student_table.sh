#!/usr/bin/env bash
# The issue-9 table for the CPU student (recipes/smollm2-student-cpu.toml) against its teacher,
# one model job at a time. Results under runs/cpu/table/; summarized in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
A="${ASSISTANT:-assistant}"
S=smollm2-student-cpu
T=smollm2-135m-instruct
O=runs/cpu/table
mkdir -p $O
[ -f $O/bench.json ] || $A bench $T $S --threads 2 --reps 3 --out $O/bench.json > $O/bench.txt
$A eval humaneval --model $S --prompt-style chat --out $O/he-student-chat-greedy --threads 2 --json > $O/he-student.json
$A eval humaneval --model $S --prompt-style completion --out $O/he-student-completion-greedy --threads 2 --json > $O/he-student-completion.json
$A eval asserts --model $S --reference $T --limit 50 --threads 2 --out $O/asserts --json > $O/asserts.json
$A fidelity --teacher $T --student $S --limit 10 --threads 2 --out $O/fidelity.json --plot $O/fidelity.png > $O/fidelity.txt
