"""`python -m assistant.bench`: the bench command, or a worker when called with --worker/--probe."""

import sys

from assistant.bench.core import _worker_main

if len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--probe"):
    sys.exit(_worker_main(sys.argv[1]))

from assistant.cli.bench import main  # noqa: E402

main()
