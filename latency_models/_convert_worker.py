"""A block-conversion worker process: ``python -m latency_models._convert_worker`` reads a JSON
job ``{"space", "options", "blocks", "runtime", "dtype"}`` on stdin and writes one JSON line per
converted block ``{"i": index, "data": base64 of the file}`` on stdout.

A plain subprocess rather than ``multiprocessing``: spawned children re-run the parent's
``__main__``, which deadlocks a user's script that calls ``nas.run`` without a main guard.
"""

from __future__ import annotations

import base64
import json
import os
import sys


def main() -> int:
    # The results go to the original stdout; anything a library prints goes to stderr.
    result_pipe = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    from latency_models.profile import _convert_block
    from latency_models.runtimes import get_runtime
    from search_spaces import Block, get_space

    job = json.loads(sys.stdin.read())
    space = get_space(job["space"], job["options"])
    rt = get_runtime(job["runtime"])
    for i, fields in enumerate(job["blocks"]):
        artifact, _ = _convert_block(space, Block(**fields), rt, job["dtype"])
        result_pipe.write(json.dumps({"i": i, "data": base64.b64encode(artifact.data).decode()}) + "\n")
        result_pipe.flush()
    result_pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
