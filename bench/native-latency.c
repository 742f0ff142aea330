/* The data plane's own small-op latency, without JS: 2 processes drive libmoonring through its
   C ABI (zig/include/moonring.h) exactly like the bench worker does (barrier, then a timed op,
   each completion awaited with mr_wait + mr_poll), so bench numbers can be split into
   "engine" and "JS + FFI + promise".
   Build: cc -O2 -I zig/include -o bench/.build/native-latency bench/native-latency.c -ldl
   Usage: native-latency LIBMOONRING.so [ITERS=2000] [BYTES=8]
   NL_RANKS=n (default 2, at most 16) ranks; NL_KIND=code (default 0, allreduce; 2 broadcast,
   4 gather, 5 scatter, 1 reduce: root 0; 7 alltoall; BYTES per rank, gather/scatter/alltoall
   blocks of BYTES).
   Prints one JSON line: mean/p50/p99/min of the slowest rank per iteration (us). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "moonring.h"

#define SYM(name) static __typeof__(&name) p_##name
SYM(mr_engine_create); SYM(mr_engine_data_port); SYM(mr_host_id); SYM(mr_engine_set_peer);
SYM(mr_pin_thread); SYM(mr_submit); SYM(mr_run_packed); SYM(mr_wait); SYM(mr_poll); SYM(mr_release); SYM(mr_engine_destroy); SYM(mr_last_error);

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static int blocking; /* NL_BLOCKING=1: mr_run_packed on this thread instead of mr_submit + mr_wait */
static uint64_t ranks01[MR_RANK_WORDS] = {3}; /* the world's ranks (0 and 1 unless NL_RANKS) */

/* alltoall (kind 7): `count` elements to and from every rank (mr_submit's counts: send counts
   per global rank, then recv counts; the world is the ranks 0..n-1). */
static uint64_t alltoall_counts[32];

static int run_op(mr_engine *e, uint32_t kind, uint64_t id, void *send, void *recv, uint64_t count) {
  if (kind == 8) count = 0; /* barrier */
  const uint64_t *counts = kind == 7 ? alltoall_counts : NULL;
  if (blocking) {
    /* As runBlocking (src/native/engine.ts) calls it: mr_run_packed, one call (it binds it with
       mr_run_bind / mr_run_bound only to spare bun:ffi's per-argument cost). */
    uint64_t a[MR_RUN_ARGS] = {0};
    a[MR_RUN_ARG_KIND] = kind; a[MR_RUN_ARG_DTYPE] = 2 /* f32 */; a[MR_RUN_ARG_REDOP] = 0 /* sum */;
    a[MR_RUN_ARG_OP_ID] = id; a[MR_RUN_ARG_RANKS] = (uint64_t)(uintptr_t)ranks01;
    a[MR_RUN_ARG_SEND] = (uint64_t)(uintptr_t)send; a[MR_RUN_ARG_RECV] = (uint64_t)(uintptr_t)recv;
    a[MR_RUN_ARG_COUNT] = count; a[MR_RUN_ARG_COUNTS] = (uint64_t)(uintptr_t)counts; a[MR_RUN_ARG_DEVICE] = (uint64_t)-1; a[MR_RUN_ARG_TIMEOUT_MS] = 30000;
    int status = p_mr_run_packed(e, a);
    if (status != 0 && a[MR_RUN_ARG_TICKET] != 0) p_mr_release(e, a[MR_RUN_ARG_TICKET]);
    return status;
  }
  int64_t t = p_mr_submit(e, kind, 2 /* f32 */, 0 /* sum */, id, ranks01, 0, send, recv, count, counts, -1, 30000);
  if (t <= 0) return (int)t;
  uint64_t tickets[8];
  int32_t st[8];
  for (;;) {
    if (!p_mr_wait(e, 1000)) continue;
    int n = p_mr_poll(e, tickets, st, 8);
    for (int i = 0; i < n; i++) {
      p_mr_release(e, tickets[i]);
      if (tickets[i] == (uint64_t)t) return st[i];
    }
  }
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: native-latency LIB [ITERS] [BYTES]\n"); return 2; }
  int iters = argc > 2 ? atoi(argv[2]) : 2000;
  size_t bytes = argc > 3 ? strtoull(argv[3], 0, 10) : 8;
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
blocking = getenv("NL_BLOCKING") && getenv("NL_BLOCKING")[0] == '1';
#define LOAD(name) p_##name = dlsym(lib, #name)
  LOAD(mr_engine_create); LOAD(mr_engine_data_port); LOAD(mr_host_id); LOAD(mr_engine_set_peer);
  LOAD(mr_pin_thread); LOAD(mr_submit); LOAD(mr_run_packed); LOAD(mr_wait); LOAD(mr_poll); LOAD(mr_release); LOAD(mr_engine_destroy); LOAD(mr_last_error);
  int nr = getenv("NL_RANKS") ? atoi(getenv("NL_RANKS")) : 2;
  int kind = getenv("NL_KIND") ? atoi(getenv("NL_KIND")) : 0;
  if (nr < 2 || nr > 16) { fprintf(stderr, "NL_RANKS: 2..16\n"); return 2; }
  ranks01[0] = (1ull << nr) - 1;
  int up[16][2], down[16][2];
  double *times = mmap(0, sizeof(double) * nr * iters, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  char cluster[64];
  snprintf(cluster, sizeof cluster, "native-latency-%d", getpid());
  for (int r = 0; r < nr; r++) { if (pipe(up[r]) || pipe(down[r])) return 1; }
  for (int r = 0; r < nr; r++) {
    if (fork() == 0) {
      /* Like the bench (and Open MPI's default): a rank that spins gets its own CPU. */
      if (blocking && !(getenv("NL_BIND") && strcmp(getenv("NL_BIND"), "none") == 0)) p_mr_pin_thread(r % sysconf(_SC_NPROCESSORS_ONLN));
      mr_engine *e = p_mr_engine_create(r, nr, (const uint8_t *)cluster, strlen(cluster), (const uint8_t *)"", 0, (const uint8_t *)"127.0.0.1", 9, 0);
      if (!e) { uint8_t m[256]; size_t n = p_mr_last_error(m, sizeof m); fprintf(stderr, "create: %.*s\n", (int)n, m); _exit(1); }
      uint16_t port = p_mr_engine_data_port(e);
      if (write(up[r][1], &port, 2) != 2) _exit(1);
      uint16_t ports[16];
      if (read(down[r][0], ports, 2 * nr) != 2 * nr) _exit(1);
      for (int q = 0; q < nr; q++) if (q != r) p_mr_engine_set_peer(e, q, (const uint8_t *)"127.0.0.1", 9, ports[q], p_mr_host_id());
      size_t count = bytes / 4 ? bytes / 4 : 1;
      for (int q = 0; q < nr; q++) alltoall_counts[q] = alltoall_counts[nr + q] = count;
      float *a = calloc(count * nr, 4), *b = calloc(count * nr, 4);
      uint64_t id = 1;
      for (int it = -50; it < iters; it++) {
        if (run_op(e, 8 /* barrier */, (id++) << 8, NULL, NULL, 0)) _exit(3);
        double t0 = now_us();
        if (run_op(e, kind, (id++) << 8, a, b, count)) _exit(3);
        if (it >= 0) times[r * iters + it] = now_us() - t0;
      }
      p_mr_engine_destroy(e);
      _exit(0);
    }
  }
  uint16_t ports[16];
  for (int r = 0; r < nr; r++) if (read(up[r][0], &ports[r], 2) != 2) return 1;
  for (int r = 0; r < nr; r++) if (write(down[r][1], ports, 2 * nr) != 2 * nr) return 1;
  int bad = 0, status;
  for (int r = 0; r < nr; r++) { wait(&status); bad |= !WIFEXITED(status) || WEXITSTATUS(status); }
  if (bad) { fprintf(stderr, "a rank failed\n"); return 1; }
  double *mx = malloc(sizeof(double) * iters), sum = 0;
  for (int i = 0; i < iters; i++) {
    mx[i] = times[i];
    for (int r = 1; r < nr; r++) if (times[r * iters + i] > mx[i]) mx[i] = times[r * iters + i];
    sum += mx[i];
  }
  qsort(mx, iters, sizeof(double), cmp);
  printf("{\"bytes\":%zu,\"iters\":%d,\"mean_us\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"min_us\":%.2f}\n", bytes, iters, sum / iters, mx[iters / 2], mx[(int)(iters * 0.99)], mx[0]);
  return 0;
}
