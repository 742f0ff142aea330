// Process and runtime metrics in Prometheus' standard names (process_*, as client libraries
// export them), build info, and the event loop's lag: how late a timer that should fire every
// LAG_INTERVAL_MS actually fires. A slow event loop starves heartbeats, so operators need it.
import { readdirSync, readFileSync } from "node:fs";
import pkg from "../../package.json" with { type: "json" };

const LAG_INTERVAL_MS = 250;
/** The lag gauge reports the worst lag of the last LAG_WINDOW samples (~5 s). */
const LAG_WINDOW = 20;
const LAG_BUCKETS_S = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** One sampler per process (the event loop is the process's); unref'd: it never keeps a process alive. */
class LagSampler {
  private timer: ReturnType<typeof setInterval> | null = null;
  private last = 0;
  private window: number[] = [];
  readonly bucketCounts = new Array<number>(LAG_BUCKETS_S.length).fill(0);
  count = 0;
  sumSeconds = 0;

  start(): void {
    if (this.timer) return;
    this.last = performance.now();
    this.timer = setInterval(() => this.sample(), LAG_INTERVAL_MS);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private sample(): void {
    const now = performance.now();
    const lagSeconds = Math.max(0, now - this.last - LAG_INTERVAL_MS) / 1000;
    this.last = now;
    this.window.push(lagSeconds);
    if (this.window.length > LAG_WINDOW) this.window.shift();
    this.count++;
    this.sumSeconds += lagSeconds;
    for (let i = 0; i < LAG_BUCKETS_S.length; i++) {
      if (lagSeconds <= LAG_BUCKETS_S[i]!) {
        this.bucketCounts[i]!++;
        break;
      }
    }
  }

  maxSeconds(): number {
    return this.window.length ? Math.max(...this.window) : 0;
  }
}

export const lagSampler = new LagSampler();

function procStat(): { utime: number; stime: number; startTicks: number; vsize: number; rssPages: number } | null {
  try {
    const text = readFileSync("/proc/self/stat", "utf8");
    // fields after the command name (which may hold spaces) in parentheses
    const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { utime: Number(f[11]), stime: Number(f[12]), startTicks: Number(f[19]), vsize: Number(f[20]), rssPages: Number(f[21]) };
  } catch {
    return null;
  }
}

function bootTimeSeconds(): number | null {
  try {
    const m = /^btime (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

function maxFds(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

function openFds(): number | null {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return null;
  }
}

const CLOCK_TICKS = 100; // USER_HZ: 100 on every Linux ABI Bun runs on
const PAGE_BYTES = 4096;
const startSeconds = Date.now() / 1000 - performance.now() / 1000;

function metric(lines: string[], name: string, type: string, help: string, value: number | null, labels = ""): void {
  if (value === null || !Number.isFinite(value)) return;
  lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}${labels} ${value}`);
}

/** process_* (Prometheus' process collector names), event-loop lag, JS heap, build info. */
export function renderRuntimeMetrics(rankLabel: string): string[] {
  const lines: string[] = [];
  const cpu = process.cpuUsage();
  const stat = procStat();
  const btime = bootTimeSeconds();
  metric(lines, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", (cpu.user + cpu.system) / 1e6);
  metric(lines, "process_cpu_user_seconds_total", "counter", "User CPU time spent in seconds.", cpu.user / 1e6);
  metric(lines, "process_cpu_system_seconds_total", "counter", "System CPU time spent in seconds.", cpu.system / 1e6);
  metric(lines, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", stat ? stat.rssPages * PAGE_BYTES : process.memoryUsage().rss);
  metric(lines, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stat?.vsize ?? null);
  metric(lines, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", stat && btime !== null ? btime + stat.startTicks / CLOCK_TICKS : startSeconds);
  metric(lines, "process_open_fds", "gauge", "Number of open file descriptors.", openFds());
  metric(lines, "process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFds());
  const mem = process.memoryUsage();
  metric(lines, "moonring_js_heap_used_bytes", "gauge", "JavaScript heap in use.", mem.heapUsed, `{${rankLabel}}`);
  metric(lines, "moonring_js_heap_total_bytes", "gauge", "JavaScript heap reserved.", mem.heapTotal, `{${rankLabel}}`);
  lagSampler.start();
  metric(lines, "moonring_event_loop_lag_seconds", "gauge", `Worst event-loop lag over the last ~${(LAG_WINDOW * LAG_INTERVAL_MS) / 1000} s.`, lagSampler.maxSeconds(), `{${rankLabel}}`);
  lines.push(
    "# HELP moonring_event_loop_lag_samples_seconds Event-loop lag samples (a timer due every 250 ms: how late it fired).",
    "# TYPE moonring_event_loop_lag_samples_seconds histogram",
  );
  let cum = 0;
  for (let i = 0; i < LAG_BUCKETS_S.length; i++) {
    cum += lagSampler.bucketCounts[i]!;
    lines.push(`moonring_event_loop_lag_samples_seconds_bucket{${rankLabel},le="${LAG_BUCKETS_S[i]}"} ${cum}`);
  }
  lines.push(
    `moonring_event_loop_lag_samples_seconds_bucket{${rankLabel},le="+Inf"} ${lagSampler.count}`,
    `moonring_event_loop_lag_samples_seconds_sum{${rankLabel}} ${lagSampler.sumSeconds}`,
    `moonring_event_loop_lag_samples_seconds_count{${rankLabel}} ${lagSampler.count}`,
  );
  lines.push(
    "# HELP moonring_build_info Build of this rank service (value 1).",
    "# TYPE moonring_build_info gauge",
    `moonring_build_info{${rankLabel},version="${pkg.version}",revision="${(process.env.MOONRING_REVISION ?? "unknown").replace(/[^A-Za-z0-9._-]/g, "")}",bun="${Bun.version}"} 1`,
  );
  return lines;
}
