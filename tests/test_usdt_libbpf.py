"""USDT against the system libbpf: a small C driver linked with libbpf-dev attaches the same
object (fixtures/unit/attach_usdt.bpf.o) to the same probes of fixtures/targets/usdt_target;
the spec ids it hands out and the struct __bpf_usdt_spec bytes it writes must equal pyebpf's.

Needs gcc and libbpf-dev (scripts/test.sh installs libbpf-dev) and root.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess

import kobjects
import pytest
from test_usdt import OBJ, TARGET, uprobe_ids, wait_gone

import pyebpf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LIBBPF_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

static int print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_DEBUG ? 0 : vfprintf(stderr, fmt, ap);
}

/* usage: driver OBJ BINARY PROVIDER name:cookie... ; prints "SPEC id hex" for every used id */
int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog, *p;
	struct bpf_link *links[64];
	int i, n = 0, err, fd;
	unsigned char buf[4096];

	libbpf_set_print(print);
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) { printf("OPEN FAILED\n"); return 1; }
	prog = bpf_object__find_program_by_name(obj, "usdt_generic");
	bpf_object__for_each_program(p, obj)
		bpf_program__set_autoload(p, p == prog);
	err = bpf_object__load(obj);
	if (err) { printf("LOAD FAILED %d\n", err); return 1; }
	for (i = 4; i < argc; i++) {
		char name[128];
		unsigned long long cookie;
		LIBBPF_OPTS(bpf_usdt_opts, opts);

		if (sscanf(argv[i], "%127[^:]:%llu", name, &cookie) != 2) return 2;
		opts.usdt_cookie = cookie;
		links[n] = bpf_program__attach_usdt(prog, -1, argv[2], argv[3], name, &opts);
		if (!links[n]) { printf("ATTACH FAILED %s\n", name); return 1; }
		n++;
	}
	fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "__bpf_usdt_specs"));
	for (i = 0; i < 256; i++) {
		int j, sz = bpf_map__value_size(bpf_object__find_map_by_name(obj, "__bpf_usdt_specs"));
		memset(buf, 0, sizeof(buf));
		if (bpf_map_lookup_elem(fd, &i, buf)) break;
		for (j = 0; j < sz && buf[j] == 0; j++);
		if (j == sz) break;  /* first untouched id: the allocator hands out ids in order */
		printf("SPEC %d ", i);
		for (j = 0; j < sz; j++) printf("%02x", buf[j]);
		printf("\n");
	}
	for (i = 0; i < n; i++) bpf_link__destroy(links[i]);
	bpf_object__close(obj);
	return 0;
}
"""


def test_spec_bytes_match_libbpf(tmp_path) -> None:
    """libbpf (the system's, linked into a small driver) attaches the same object to the same
    probes: the spec ids it hands out and the bytes it writes for them must equal ours."""
    assert shutil.which("gcc") and os.path.exists("/usr/include/bpf/libbpf.h"), \
        "the libbpf driver needs gcc and libbpf-dev (scripts/test.sh installs libbpf-dev)"
    (tmp_path / "driver.c").write_text(LIBBPF_DRIVER)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "driver"), str(tmp_path / "driver.c"),
                    "-lbpf"], check=True, capture_output=True)
    probes = [("consts", 11), ("regs", 12), ("mem", 13), ("sema", 14), ("twice", 2**64 - 15),
              ("step", 16), ("noargs", 17)]
    out = subprocess.run([str(tmp_path / "driver"), OBJ, TARGET, "usdt_test",
                          *(f"{n}:{c}" for n, c in probes)],
                         check=True, capture_output=True, text=True).stdout
    theirs = {int(i): bytes.fromhex(h) for _, i, h in
              (line.split() for line in out.splitlines() if line.startswith("SPEC "))}
    assert len(theirs) == 8, out  # twice has two sites with different argument strings
    pyebpf.load(OBJ).close()  # process-wide caches, before counting fds
    fds = kobjects.fd_state()
    ids: list[int] = []
    with pyebpf.load(OBJ) as o:
        ls = [o.programs["usdt_generic"].attach_usdt(TARGET, "usdt_test", n, cookie=c)
              for n, c in probes]
        try:
            for link in ls:
                ids.extend(uprobe_ids(link))
            assert [i for link in ls for i in link.spec_ids] == list(range(8))
            ours = {i: o.maps["__bpf_usdt_specs"].lookup_bytes(i.to_bytes(4, "little"))
                    for i in range(8)}
        finally:
            for link in ls:
                link.close()
    assert ours == theirs
    gc.collect()
    assert wait_gone(ids) == [] and kobjects.fd_state() == fds
