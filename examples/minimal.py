"""minimal: libbpf-bootstrap's "hello world", in Python.

Loads fixtures/minimal.bpf.o (built from fixtures/src/minimal.bpf.c), tells the program
our pid through its .bss global ``my_pid``, attaches it to the
syscalls:sys_enter_write tracepoint, and writes once a second. Each write makes
the program call bpf_printk. Watch the output with

    cat /sys/kernel/tracing/trace_pipe

Run as root: python examples/minimal.py [SECONDS]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyebpf

OBJ = Path(__file__).resolve().parent.parent / "fixtures" / "minimal.bpf.o"


def main(seconds: float = 5.0) -> None:
    with pyebpf.load(OBJ) as obj:
        obj.globals["my_pid"] = os.getpid()
        obj.attach()
        print("Attached. Run `cat /sys/kernel/tracing/trace_pipe` to see the output.")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sys.stderr.write(".")
            sys.stderr.flush()
            time.sleep(1)
        print()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
