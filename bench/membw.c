/* Memory bandwidth of this host, the way a ring allreduce through shared memory uses it:
   P processes at once (the ranks), each streaming over its own buffers of SIZE bytes.
     copy: memcpy(dst, src, SIZE)              -> GB/s of bytes copied (read SIZE + write SIZE)
     add:  dst[i] = a[i] + b[i] (float32)      -> GB/s of bytes written (read 2 SIZE + write SIZE)
   Usage: membw SIZE_BYTES [NPROC=2] [SECONDS=0.5]
   Prints one JSON line: {"size","nproc","copy_gbps","add_gbps"} where each rate is the mean
   over processes of one process's rate while all run concurrently (bench/compare-mpi.ts). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void add(float *restrict d, const float *restrict a, const float *restrict b, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = a[i] + b[i];
}

/* Runs kernel k over buffers for `secs` after `start`; returns bytes/s (copied or written). */
static double run(int k, size_t size, double secs, double start, char *src, char *src2, char *dst) {
  while (now() < start) { }
  double t0 = now(), t1;
  size_t reps = 0;
  do {
    if (k == 0) memcpy(dst, src, size);
    else add((float *)dst, (const float *)src, (const float *)src2, size / 4);
    reps++;
    __asm__ volatile("" ::: "memory");
    t1 = now();
  } while (t1 - t0 < secs);
  return (double)size * reps / (t1 - t0);
}

int main(int argc, char **argv) {
  size_t size = argc > 1 ? strtoull(argv[1], 0, 10) : (16u << 20);
  int nproc = argc > 2 ? atoi(argv[2]) : 2;
  double secs = argc > 3 ? atof(argv[3]) : 0.5;
  if (size < 4096 || nproc < 1 || nproc > 64) { fprintf(stderr, "usage: membw SIZE_BYTES [NPROC] [SECONDS]\n"); return 2; }
  size &= ~(size_t)63;
  /* results[k * nproc + p], shared with the children */
  double *res = mmap(0, 2 * nproc * sizeof(double), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  double start_copy = now() + 0.2 + 0.02 * nproc;
  for (int p = 0; p < nproc; p++) {
    if (fork() == 0) {
      char *a = aligned_alloc(4096, size), *b = aligned_alloc(4096, size), *d = aligned_alloc(4096, size);
      for (size_t i = 0; i < size / 4; i++) { ((float *)a)[i] = (float)(i % 97); ((float *)b)[i] = 1.0f; ((float *)d)[i] = 0; }
      res[0 * nproc + p] = run(0, size, secs, start_copy, a, b, d);
      res[1 * nproc + p] = run(1, size, secs, start_copy + secs + 0.05, a, b, d);
      _exit(0);
    }
  }
  for (int p = 0; p < nproc; p++) wait(NULL);
  double c = 0, s = 0;
  for (int p = 0; p < nproc; p++) { c += res[p]; s += res[nproc + p]; }
  printf("{\"size\":%zu,\"nproc\":%d,\"copy_gbps\":%.3f,\"add_gbps\":%.3f}\n", size, nproc, c / nproc / 1e9, s / nproc / 1e9);
  return 0;
}
