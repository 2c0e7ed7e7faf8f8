"""CPU latency benchmarks: fresh worker processes, machine record, summaries against the bandwidth ceiling."""
