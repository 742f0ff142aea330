/* What one cross-process hand-off costs on this host: two processes bounce a counter through a
   shared page, either busy-polling (what Open MPI's shared-memory path does) or sleeping on a
   futex after a short spin (what a thread that blocks does: moonring's link and op threads).
   Usage: pingpong [ROUNDS=20000] [SPIN_NS=2000]
   Prints one JSON line: one-way hand-off latency (half a round trip), p50 and mean, per mode. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

struct shared {
  _Alignas(64) _Atomic uint32_t turn; /* even: parent's turn, odd: child's */
  _Alignas(64) _Atomic uint32_t sleeping[2];
};

static void wait_for(struct shared *s, uint32_t want, int mode, uint64_t spin_ns, int me) {
  if (mode == 0) {
    while (atomic_load_explicit(&s->turn, memory_order_acquire) != want) __builtin_ia32_pause();
    return;
  }
  uint64_t until = ns() + spin_ns;
  for (;;) {
    for (int i = 0; i < 64; i++) {
      if (atomic_load_explicit(&s->turn, memory_order_acquire) == want) return;
      __builtin_ia32_pause();
    }
    if (ns() >= until) break;
  }
  for (;;) {
    uint32_t cur = atomic_load(&s->turn);
    if (cur == want) return;
    atomic_store(&s->sleeping[me], 1);
    cur = atomic_load(&s->turn);
    if (cur != want) syscall(SYS_futex, &s->turn, FUTEX_WAIT, cur, NULL, NULL, 0);
    atomic_store(&s->sleeping[me], 0);
  }
}

static void pass(struct shared *s, uint32_t next, int mode, int other) {
  atomic_store_explicit(&s->turn, next, memory_order_release);
  if (mode == 1 && atomic_load(&s->sleeping[other])) syscall(SYS_futex, &s->turn, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 20000;
  uint64_t spin_ns = argc > 2 ? strtoull(argv[2], 0, 10) : 2000;
  uint64_t *lat = malloc(sizeof(uint64_t) * rounds);
  printf("{");
  for (int mode = 0; mode < 2; mode++) {
    struct shared *s = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t pid = fork();
    if (pid == 0) {
      for (int i = 0; i < rounds + 100; i++) {
        wait_for(s, 2 * i + 1, mode, spin_ns, 1);
        pass(s, 2 * i + 2, mode, 0);
      }
      _exit(0);
    }
    for (int i = 0; i < rounds + 100; i++) {
      uint64_t t0 = ns();
      pass(s, 2 * i + 1, mode, 1);
      wait_for(s, 2 * i + 2, mode, spin_ns, 0);
      if (i >= 100) lat[i - 100] = ns() - t0;
    }
    waitpid(pid, 0, 0);
    double sum = 0;
    for (int i = 0; i < rounds; i++) sum += lat[i];
    qsort(lat, rounds, sizeof(uint64_t), cmp);
    printf("%s\"%s\":{\"oneway_p50_us\":%.3f,\"oneway_mean_us\":%.3f,\"oneway_p99_us\":%.3f}", mode ? "," : "", mode ? "futex_after_spin" : "busy_poll",
           lat[rounds / 2] / 2e3, sum / rounds / 2e3, lat[(int)(rounds * 0.99)] / 2e3);
    munmap(s, 4096);
  }
  printf(",\"spin_ns\":%llu,\"rounds\":%d}\n", (unsigned long long)spin_ns, rounds);
  return 0;
}
