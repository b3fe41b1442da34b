"""The one exception hierarchy of pyebpf.

Every error the library raises on purpose derives from :class:`PyebpfError`.
Errors carry structured data (section, offset, errno, ...) besides the message.
"""

from __future__ import annotations

from typing import Any


class PyebpfError(Exception):
    """Base class of every error raised by pyebpf."""


class ObjectError(PyebpfError):
    """The BPF object file (ELF) is malformed or unsupported."""

    def __init__(self, message: str, *, section: str | None = None, path: str | None = None):
        self.section = section
        self.path = path
        where = []
        if path:
            where.append(path)
        if section:
            where.append(f"section {section!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class BTFError(PyebpfError):
    """BTF or BTF.ext data is malformed, or a BTF query failed."""


class SectionError(ObjectError):
    """A program's SEC() name is not known (raised at load, as libbpf does)."""


class CORERelocationError(PyebpfError):
    """A CO-RE relocation record is malformed (not merely unresolvable).

    Unresolvable relocations do not raise: the instruction is poisoned, as libbpf does.
    """

    def __init__(self, message: str, *, program: str | None = None, relo_index: int | None = None):
        self.program = program
        self.relo_index = relo_index
        prefix = f"{program}: " if program else ""
        if relo_index is not None:
            prefix += f"CO-RE relo #{relo_index}: "
        super().__init__(prefix + message)


class ExternError(PyebpfError):
    """A strong extern (kconfig, ksym, kfunc) could not be resolved."""

    def __init__(self, message: str, *, name: str | None = None):
        self.name = name
        super().__init__(message)


class OptionError(PyebpfError, ValueError):
    """An option or argument passed to pyebpf is invalid."""


class ClosedError(PyebpfError, ValueError):
    """An operation on something already closed (an object, map, program, link or buffer).

    A ValueError too, as Python's own I/O on a closed file is.
    """


class SyscallError(PyebpfError, OSError):
    """A bpf(), perf_event_open() or ioctl() call failed.

    ``errno`` is the kernel's error number, ``command`` the command name
    (e.g. ``"BPF_MAP_CREATE"``) and ``hint`` a human explanation of the likely cause.
    """

    errno: int  # always set (OSError's may be None; ours never is)

    def __init__(self, errno: int, command: str, hint: str = "", *, detail: str = ""):
        import errno as _errno
        import os as _os

        name = _errno.errorcode.get(errno) or {524: "ENOTSUPP"}.get(errno, f"errno {errno}")
        strerror = _os.strerror(errno) if errno != 524 else "Operation not supported"
        OSError.__init__(self, errno, strerror)
        self.command = command
        self.hint = hint
        self.errname = name
        self.detail = detail

    def __str__(self) -> str:
        msg = f"{self.command} failed: {self.strerror} ({self.errname})"
        if self.detail:
            msg = f"{self.command} ({self.detail}) failed: {self.strerror} ({self.errname})"
        if self.hint:
            msg += f": {self.hint}"
        return msg

    def __reduce__(self) -> tuple[Any, ...]:  # keep pickling/copy working despite the custom __init__
        return (_rebuild_syscall_error, (type(self), self.__dict__.copy(), self.errno))


def _rebuild_syscall_error(cls: type[SyscallError], state: dict[str, Any], errno: int) -> SyscallError:
    import os as _os

    obj = cls.__new__(cls)
    OSError.__init__(obj, errno, _os.strerror(errno))
    obj.__dict__.update(state)
    return obj


class VerifierError(SyscallError):
    """The kernel's verifier (program or BTF) rejected the load.

    ``log`` is the complete verifier log (never truncated), ``insn_index`` the failing
    instruction parsed from the log (None if not found), ``source_line`` the C source
    line from line_info when the loader knows it, ``program`` the program's name.
    """

    def __init__(
        self,
        errno: int,
        command: str,
        hint: str = "",
        *,
        log: str = "",
        log_true_size: int | None = None,
        insn_index: int | None = None,
        source_line: str | None = None,
        program: str | None = None,
        notes: list[str] | None = None,
    ):
        super().__init__(errno, command, hint, detail=program or "")
        self.log = log
        self.log_true_size = log_true_size
        self.insn_index = insn_index
        self.source_line = source_line
        self.program = program
        self.notes = list(notes or [])

    def __str__(self) -> str:
        msg = super().__str__()
        extra = []
        if self.insn_index is not None:
            extra.append(f"at instruction {self.insn_index}")
        if self.source_line:
            extra.append(f"source: {self.source_line}")
        if extra:
            msg += " [" + "; ".join(extra) + "]"
        for note in self.notes:
            msg += "\n" + note
        if self.log:
            tail = self.log.rstrip("\n").splitlines()[-12:]
            msg += "\nverifier log (last lines):\n" + "\n".join(tail)
        return msg
