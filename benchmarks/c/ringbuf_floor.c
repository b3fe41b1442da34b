// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The C floor for the ring buffer consumer benchmark: libbpf's ring_buffer.
 *
 * Opens fixtures/ringbuf_producer.bpf.o with libbpf, runs the producer
 * (produce_rb, via BPF_PROG_TEST_RUN) in a loop from a thread pinned to the
 * producer CPU, and consumes on the consumer CPU with ring_buffer__consume
 * (busy) or ring_buffer__poll (epoll wake-ups) for a fixed time.
 * MODE "drain" measures the consumer alone: fill the ring with one test run,
 * time one ring_buffer__consume over it, repeat for SECONDS.
 *
 * usage: ringbuf_floor OBJ SIZE SECONDS MODE(consume|poll|drain) [RING_BYTES]
 *                      [CONSUMER_CPU PRODUCER_CPU [FLAGS]]
 * FLAGS goes to bpf_ringbuf_submit (1 = BPF_RB_NO_WAKEUP: the producer never
 * wakes the consumer, for the busy consumer).
 * prints one JSON line: records consumed, records/s, dropped by the producer.
 * Built at benchmark time: gcc -O2 ringbuf_floor.c -lbpf -lpthread */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct rb_args {
	__u64 seq;
	__u32 count;
	__u32 size;
	__u32 mode;
	__u32 flags;
	__u32 produced;
	__u32 dropped;
};

static atomic_int stop;
static int prog_fd;
static unsigned int rec_size, rb_flags;
static unsigned long long produced, dropped;
static unsigned long long consumed, checksum;

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *producer(void *arg)
{
	struct rb_args args = { .count = 4096, .size = rec_size, .mode = 1,
				.flags = rb_flags };
	LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args,
		    .ctx_size_in = sizeof(args));

	pin(*(int *)arg);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		if (bpf_prog_test_run_opts(prog_fd, &opts)) {
			perror("test_run");
			break;
		}
		produced += args.produced;
		dropped += args.dropped;
	}
	return NULL;
}

static int on_record(void *ctx, void *data, size_t size)
{
	consumed++;
	checksum += *(__u64 *)data;
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int ccpu = 0, pcpu = 1, busy, err;
	unsigned long ring_bytes = 4 << 20;
	struct bpf_object *obj;
	struct ring_buffer *rb;
	pthread_t thr;
	double secs, t0, t1;

	if (argc < 5) {
		fprintf(stderr, "usage: %s OBJ SIZE SECONDS consume|poll|drain [RING_BYTES] [CCPU PCPU [FLAGS]]\n",
			argv[0]);
		return 2;
	}
	rec_size = atoi(argv[2]);
	secs = atof(argv[3]);
	busy = strcmp(argv[4], "consume") == 0;
	if (argc > 5)
		ring_bytes = strtoul(argv[5], NULL, 0);
	if (argc > 7) {
		ccpu = atoi(argv[6]);
		pcpu = atoi(argv[7]);
	}
	if (argc > 8)
		rb_flags = strtoul(argv[8], NULL, 0);
	libbpf_set_print(NULL);
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		perror("open");
		return 1;
	}
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "rb"), ring_bytes);
	err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "load: %d\n", err);
		return 1;
	}
	prog_fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "produce_rb"));
	rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj, "rb")),
			      on_record, NULL, NULL);
	if (!rb) {
		perror("ring_buffer__new");
		return 1;
	}
	pin(ccpu);
	if (strcmp(argv[4], "drain") == 0) {
		/* Consumer cost alone: fill the ring, then time one
		 * ring_buffer__consume over it; repeat for SECONDS of wall time. */
		struct rb_args args = { .size = rec_size, .mode = 1, .flags = 1 };
		LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args,
			    .ctx_size_in = sizeof(args));
		double spent = 0, start = now();

		args.count = ring_bytes / ((rec_size + 15) & ~7);
		while (now() - start < secs) {
			if (bpf_prog_test_run_opts(prog_fd, &opts)) {
				perror("test_run");
				return 1;
			}
			produced += args.produced;
			dropped += args.dropped;
			t0 = now();
			ring_buffer__consume(rb);
			spent += now() - t0;
		}
		printf("{\"size\": %u, \"mode\": \"drain\", \"consumed\": %llu, "
		       "\"seconds\": %.4f, \"rate\": %.0f, \"produced\": %llu, "
		       "\"dropped\": %llu, \"checksum\": %llu}\n",
		       rec_size, consumed, spent, consumed / spent, produced, dropped, checksum);
		ring_buffer__free(rb);
		bpf_object__close(obj);
		return 0;
	}
	pthread_create(&thr, NULL, producer, &pcpu);
	t0 = now();
	t1 = t0;
	while (t1 - t0 < secs) {
		if (busy)
			ring_buffer__consume(rb);
		else
			ring_buffer__poll(rb, 100);
		t1 = now();
	}
	atomic_store(&stop, 1);
	pthread_join(thr, NULL);
	printf("{\"size\": %u, \"mode\": \"%s\", \"consumed\": %llu, \"seconds\": %.4f, "
	       "\"rate\": %.0f, \"flags\": %u, \"produced\": %llu, \"dropped\": %llu, \"checksum\": %llu}\n",
	       rec_size, argv[4], consumed, t1 - t0, consumed / (t1 - t0), rb_flags, produced,
	       dropped, checksum);
	ring_buffer__free(rb);
	bpf_object__close(obj);
	return 0;
}
