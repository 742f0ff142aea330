// A process's memory maps (VMAs) against the kernel's per-process limit, for the 1,024-rank world.
//
// Why: Bun's allocator (bmalloc/libpas, from WebKit) marks every range it decommits
// MADV_DONTDUMP and every range it recommits MADV_DODUMP. That flag is per VMA, so each toggle
// splits the heap's mapping, and neighbours that differ can't merge back: a heap with GBs of
// scattered live chunks (1,024 rank services in one process, ~3.5 GB) shreds into tens of
// thousands of VMAs (25,000-49,000 seen in a normal run of tests/support/scale-world.ts). At
// vm.max_map_count (65,530 by default) every madvise that needs a split fails, with EAGAIN on
// Linux >= 6.3, and bmalloc retries EAGAIN without end: the JS thread and the scavenger spin at
// 100% CPU in madvise for good (WebKit bug 319025, oven-sh/bun#27490). That was the CI hang.
// Malloc=1 (read by bmalloc at process start) sends those allocations to the system malloc,
// which toggles nothing: the same world stays at ~100 VMAs.
import { readdirSync, readFileSync } from "node:fs";

/** The environment that keeps a process with a heap of GBs clear of the madvise livelock (see above). */
export const SYSTEM_MALLOC_ENV = { Malloc: "1" } as const;

/** The number of memory maps (VMAs) of process `pid`, or -1 where /proc can't tell. */
export function mapCount(pid: number | "self" = "self"): number {
  try {
    const text = readFileSync(`/proc/${pid}/maps`, "latin1");
    let n = 0;
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) n++;
    return n;
  } catch {
    return -1;
  }
}

/** The kernel's limit on a process's memory maps (vm.max_map_count), or -1 where unknown. */
export function mapLimit(): number {
  try {
    return Number(readFileSync("/proc/sys/vm/max_map_count", "latin1").trim());
  } catch {
    return -1;
  }
}

/** Each thread of `pid`: name, state (R running, S sleeping, ...) and CPU seconds, for a hang report. */
export function threadStates(pid: number): string {
  try {
    const hz = 100; // USER_HZ: clock ticks of /proc/<pid>/task/<tid>/stat
    return readdirSync(`/proc/${pid}/task`)
      .map((tid) => {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "latin1");
        const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const cpuS = (Number(f[11]) + Number(f[12])) / hz; // utime + stime (fields 14, 15)
        return `${tid} "${name}" ${f[0]} ${cpuS.toFixed(1)} s`;
      })
      .join("; ");
  } catch (e) {
    return `unknown (${(e as Error).message})`;
  }
}

/**
 * Takes `slots` of this process's memory maps (one mapping of `slots` pages, every other one
 * PROT_NONE), to bring the limit near on demand: how the hang is reproduced
 * (MOONRING_SCALE_TAKE_MAPS in tests/support/scale-world.ts). Never unmapped: the process exits.
 */
export async function takeMapSlots(slots: number): Promise<void> {
  const { dlopen, FFIType } = await import("bun:ffi");
  const libc = dlopen("libc.so.6", {
    mmap: { args: [FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.u64 },
    mprotect: { args: [FFIType.u64, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
  });
  const page = 4096;
  const PROT_READ_WRITE = 3;
  const MAP_PRIVATE_ANONYMOUS = 0x22;
  const base = libc.symbols.mmap(null, BigInt(slots * page), PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0n);
  if (base === 0xffffffffffffffffn) throw new Error(`mmap of ${slots} pages failed`);
  for (let i = 1; i < slots; i += 2) {
    if (libc.symbols.mprotect(base + BigInt(i * page), BigInt(page), 0) !== 0) throw new Error(`mprotect failed after ${i} of ${slots} map slots`);
  }
}
