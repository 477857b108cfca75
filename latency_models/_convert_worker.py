"""A block-conversion worker process: ``python -m latency_models._convert_worker`` reads a
pickled ``(space, blocks, runtime, dtype)`` on stdin and writes the pickled
``[(block, artifact), ...]`` on stdout.

A plain subprocess rather than ``multiprocessing``: spawned children re-run the parent's
``__main__``, which deadlocks a user's script that calls ``nas.run`` without a main guard.
Only our own processes exchange these pickles; nothing a user keeps is pickled.
"""

from __future__ import annotations

import os
import pickle
import sys


def main() -> int:
    # The result goes to the original stdout; anything a library prints goes to stderr.
    result_pipe = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from latency_models.profile import _convert_chunk

    job = pickle.load(sys.stdin.buffer)
    result = _convert_chunk(job)
    result_pipe.write(pickle.dumps(result))
    result_pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
