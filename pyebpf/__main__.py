"""``python -m pyebpf``: command-line entry point."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyebpf", description="pure-Python eBPF toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe a BPF object file and its CO-RE relocations")
    p.add_argument("object", help="path to a clang-built .bpf.o")
    p.add_argument("--btf", default=None, help="target kernel BTF (default /sys/kernel/btf/vmlinux)")
    p.add_argument("--no-kernel", action="store_true",
                   help="do not read the running kernel: skip relocation and extern resolution")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="explain every CO-RE candidate, not only the chosen one")
    args = parser.parse_args(argv)

    from .errors import PyebpfError

    try:
        if args.command == "inspect":
            from .cli.inspect import inspect

            inspect(args.object, btf_path=args.btf, use_kernel=not args.no_kernel,
                    verbose=args.verbose, out=sys.stdout)
    except PyebpfError as exc:
        print(f"pyebpf: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
