"""Probe run inside the image: wait for SIGTERM, take a few seconds to "save", exit 75.

Proves that `docker stop` delivers SIGTERM to the program through tini and the
entrypoint, and waits for it instead of killing it.
"""

import signal
import sys
import time
from pathlib import Path


def on_term(signum, frame):
    time.sleep(3)  # a checkpoint save that takes a while
    Path("/volume/saved").write_text("saved after SIGTERM\n")
    sys.exit(75)


def main() -> None:
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
