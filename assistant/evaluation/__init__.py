"""HumanEval-style evaluation: problems, sanitizing completions, pass@k and resumable runs."""
