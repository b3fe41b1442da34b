"""The one exception hierarchy of pyebpf.

Every error the library raises on purpose derives from :class:`PyebpfError`.
Errors carry structured data (section, offset, errno, ...) besides the message.
"""

from __future__ import annotations


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
