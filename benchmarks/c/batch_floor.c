// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The C floor for the map batch benchmark: libbpf's bpf_map_lookup_batch.
 *
 * Creates a BPF_MAP_TYPE_HASH (u32 -> u64) of N entries, fills it with
 * bpf_map_update_batch, then times full dumps with bpf_map_lookup_batch in
 * batches of COUNT entries into preallocated key/value arrays (the
 * work any C tool does before it looks at the data).
 *
 * usage: batch_floor N COUNT REPEAT
 * prints one line: "entries N best_ms B median_ms M"
 * Built at benchmark time: gcc -O2 batch_floor.c -lbpf */
#include <bpf/bpf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	__u32 n = argc > 1 ? atoi(argv[1]) : 100000;
	__u32 count = argc > 2 ? atoi(argv[2]) : n;
	int repeat = argc > 3 ? atoi(argv[3]) : 20;
	__u32 *keys = calloc(n, sizeof(*keys));
	__u64 *vals = calloc(n, sizeof(*vals));
	double *times = calloc(repeat, sizeof(*times));
	__u32 i, total = 0;
	int fd, r;

	fd = bpf_map_create(BPF_MAP_TYPE_HASH, "batch_floor", 4, 8, n, NULL);
	if (fd < 0) {
		perror("bpf_map_create");
		return 1;
	}
	for (i = 0; i < n; i++) {
		keys[i] = i;
		vals[i] = (__u64)i * 3;
	}
	if (bpf_map_update_batch(fd, keys, vals, &n, NULL)) {
		perror("bpf_map_update_batch");
		return 1;
	}
	for (r = 0; r < repeat; r++) {
		__u64 in = 0, out = 0;
		void *in_p = NULL;
		double t0 = now_ms();

		total = 0;
		for (;;) {
			__u32 c = count;
			int err;

			if (total + c > n)
				c = n - total;
			if (!c)
				c = 1;
			err = bpf_map_lookup_batch(fd, in_p, &out, keys + total, vals + total, &c, NULL);
			total += c;
			if (err) {
				if (errno == ENOENT)
					break;
				perror("bpf_map_lookup_batch");
				return 1;
			}
			in = out;
			in_p = &in;
		}
		times[r] = now_ms() - t0;
		if (total != n) {
			fprintf(stderr, "dumped %u of %u\n", total, n);
			return 1;
		}
	}
	qsort(times, repeat, sizeof(*times), cmp);
	printf("entries %u best_ms %.3f median_ms %.3f\n", total, times[0], times[repeat / 2]);
	return 0;
}
