"""Pinning: path checks (bpffs only, no '..', symlinks resolved), pin/unpin of maps,
programs and links, mounting bpffs with consent, and a pinned map shared by processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import pyebpf
from pyebpf import pin as P
from pyebpf.errors import OptionError
from pyebpf.maps.map import Map
from pyebpf.program import Program

try:
    from unitobj import ROOT, unit_object
except ImportError:  # pragma: no cover
    from tests.unitobj import ROOT, unit_object  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not P.is_bpffs("/sys/fs/bpf"),
                                reason="needs root and a bpffs at /sys/fs/bpf")


def _rm_tree(d: str) -> None:
    # bpffs has no rmtree-unfriendly files, but unlink pins and symlinks one by one
    if not os.path.lexists(d):
        return
    for root, dirs, files in os.walk(d, topdown=False):
        for f in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            os.unlink(os.path.join(root, f))
        for x in dirs:
            if not os.path.islink(os.path.join(root, x)):
                os.rmdir(os.path.join(root, x))
    os.rmdir(d)


@pytest.fixture
def pindir():
    d = f"/sys/fs/bpf/pyebpf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    os.mkdir(d)
    try:
        yield d
    finally:
        _rm_tree(d)


@pytest.fixture
def tmpdir_plain():
    d = f"/tmp/pyebpf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    os.mkdir(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- path checks ----------------------------------------------------------------------------


def test_check_accepts_bpffs_paths(pindir):
    assert P.check_pin_path(f"{pindir}/m") == f"{pindir}/m"
    assert P.check_pin_path(Path(pindir) / "m") == f"{pindir}/m"
    assert P.bpffs_mount_point(pindir) == "/sys/fs/bpf"


def test_refuses_outside_bpffs(tmpdir_plain):
    with pytest.raises(P.PinPathError, match=r"not on a BPF filesystem.*mount -t bpf"):
        P.check_pin_path(f"{tmpdir_plain}/m")
    with pytest.raises(P.PinPathError, match="does not exist"):
        P.check_pin_path(f"/sys/fs/bpf/pyebpf_nope_{uuid.uuid4().hex}/m")
    assert issubclass(P.PinPathError, OptionError)


@pytest.mark.parametrize("bad", ["", "/sys/fs/bpf/", "/sys/fs/bpf/.", "/sys/fs/bpf/a\0b"])
def test_refuses_malformed(bad):
    with pytest.raises(P.PinPathError):
        P.check_pin_path(bad)


def test_refuses_dotdot(pindir):
    os.mkdir(f"{pindir}/sub")
    for bad in ("/sys/fs/bpf/../../tmp/x", f"{pindir}/sub/../x", f"{pindir}/..",
                "../sys/fs/bpf/x"):
        with pytest.raises(P.PinPathError, match=r"'\.\.'"):
            P.check_pin_path(bad)


def test_symlinks_resolved(pindir, tmpdir_plain):
    # a symlink outside bpffs pointing in: allowed, the resolved path is returned
    link_in = f"{tmpdir_plain}/in"
    os.symlink(pindir, link_in)
    assert P.check_pin_path(f"{link_in}/m") == f"{pindir}/m"
    # a symlink on bpffs pointing out: refused
    os.symlink(tmpdir_plain, f"{pindir}/out")
    with pytest.raises(P.PinPathError, match="not on a BPF filesystem"):
        P.check_pin_path(f"{pindir}/out/m")


# -- pin / unpin of maps, programs and links ----------------------------------------------------


def test_map_and_program_pin_unpin(pindir, tmpdir_plain):
    obj = pyebpf.load(unit_object("user_ringbuf"))
    try:
        m = obj.maps["user_rin.bss"]
        prog = obj.programs["drain"]
        with pytest.raises(P.PinPathError, match="mount -t bpf"):
            m.pin(f"{tmpdir_plain}/m")
        assert os.listdir(tmpdir_plain) == [] and m.pin_path is None
        with pytest.raises(P.PinPathError):
            prog.pin(f"{pindir}/../escape")
        m.pin(f"{pindir}/m")
        prog.pin(f"{pindir}/p")
        with Map.from_pin(f"{pindir}/m") as again:
            assert again.id == m.id
        with Program.from_pin(f"{pindir}/p") as again:
            assert again.id == prog.id
        m.unpin()
        prog.unpin()
        assert os.listdir(pindir) == []
        P.pin(m, f"{pindir}/m2")  # the generic helper
        assert P.unpin(f"{pindir}/m2") and not P.unpin(f"{pindir}/m2")
        with pytest.raises(FileNotFoundError):
            P.unpin(f"{pindir}/m2", missing_ok=False)
        with pytest.raises(P.PinPathError, match="directory"):
            os.mkdir(f"{pindir}/d")
            P.unpin(f"{pindir}/d")
    finally:
        obj.close()


def test_unpin_never_touches_other_filesystems(tmpdir_plain):
    victim = f"{tmpdir_plain}/keep"
    Path(victim).write_text("x")
    with pytest.raises(P.PinPathError):
        P.unpin(victim)
    with pytest.raises(P.PinPathError):
        P.unpin(f"/sys/fs/bpf/../..{victim}")
    assert Path(victim).read_text() == "x"


def test_link_pin_checked(pindir):
    from pyebpf import links

    obj = pyebpf.load(unit_object("attach_counters"))
    try:
        with links.attach_raw_tracepoint(obj.programs["count_raw_sys_enter"], "sys_enter") as lk:
            with pytest.raises(P.PinPathError, match=r"'\.\.'"):
                lk.pin(f"{pindir}/../../../tmp/l")
            lk.pin(f"{pindir}/l")
            with links.Link.from_pin(f"{pindir}/l") as again:
                assert again.id == lk.id
            lk.unpin()
            assert not os.path.exists(f"{pindir}/l")
    finally:
        obj.close()


# -- mounting ---------------------------------------------------------------------------------


def test_mount_needs_consent(tmpdir_plain):
    with pytest.raises(P.PinPathError, match="consent"):
        P.mount_bpffs(tmpdir_plain, consent=False)
    assert not P.is_bpffs(tmpdir_plain)
    assert P.mount_bpffs("/sys/fs/bpf", consent=True) is False  # already there: nothing done
    asked: list[str] = []
    assert P.ensure_bpffs(tmpdir_plain, ask=lambda q: asked.append(q) or "n") is False
    assert asked and "mount -t bpf bpf" in asked[0] and not P.is_bpffs(tmpdir_plain)


def test_mount_with_consent_in_private_namespace(tmpdir_plain):
    """Mount for real, inside a private mount namespace so nothing leaks on failure."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    target = f"{tmpdir_plain}/bpffs"
    code = textwrap.dedent(f"""
        from pyebpf import pin as P
        assert not P.is_bpffs({target!r})
        assert P.ensure_bpffs({target!r}, ask=lambda q: "y") is True
        assert P.is_bpffs({target!r}) and P.bpffs_mount_point({target!r}) == {target!r}
        assert P.mount_bpffs({target!r}, consent=True) is False
        assert P.check_pin_path({target!r} + "/x") == {target!r} + "/x"
        print("ok")
    """)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                        code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert not P.is_bpffs(target)  # the mount died with the namespace


# -- a pinned map shared by two processes -----------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, pyebpf
    path, root, mode = sys.argv[1:4]
    obj = pyebpf.load(path, pin_root=root)
    m = obj.maps["shared"]
    if mode == "write":
        m[0] = 41
    else:
        print(m[0])
        obj.programs["touch"].test_run(ctx_in=bytes(8))  # the program sees the same map
    obj.close()
""")


def _child(pindir: str, mode: str) -> str:
    r = subprocess.run([sys.executable, "-c", _CHILD, str(unit_object("pin_by_name")), pindir,
                        mode], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pinned_map_shared_across_processes(pindir):
    pinned = f"{pindir}/shared"
    _child(pindir, "write")
    assert os.path.exists(pinned)  # the pin outlives the writer
    assert _child(pindir, "read") == "41"
    with Map.from_pin(pinned) as m:
        assert m.name == "shared" and m[0] == 42  # the reader's program incremented it
        m[0] = 100
    obj = pyebpf.load(unit_object("pin_by_name"), pin_root=pindir)
    try:
        assert obj.maps["shared"][0] == 100  # reused, not recreated
        obj.maps["shared"].unpin()
    finally:
        obj.close()
    assert not os.path.exists(pinned)
