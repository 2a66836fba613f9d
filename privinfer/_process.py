"""Process hygiene shared by every child privinfer starts (servers, 2PC parties, dealers)."""
from __future__ import annotations

import os
import threading
import time


def exit_with_parent(interval: float = 0.5, code: int = 0) -> None:
    """Exit this process as soon as its parent dies, so that no child is ever orphaned."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(code)

    threading.Thread(target=watch, daemon=True, name="privinfer-parent-watch").start()
