"""`python -m assistant.bench`: the bench command, or a worker when called with --worker/--probe.

The worker path imports only the worker module (assistant.bench.worker), never the command line.
"""

import sys

if len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--probe"):
    from assistant.bench.worker import main as worker_main

    sys.exit(worker_main(sys.argv[1]))

from assistant.cli.bench.command import main

main()
