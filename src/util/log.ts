// Minimal structured-ish logger: one line per event on stderr, prefixed with the rank.
// stdout is reserved for lines other programs parse (launch's "rank R ready ..." lines).

/**
 * Writes a line to stdout/stderr, dropping it (and every later one) once the stream broke: a
 * write to a closed pipe (`launch ... | head -2`) fails with EPIPE as an 'error' event, and with
 * no listener that event became an uncaught exception whose handler logged it, which failed
 * again: a rank spun at 100% CPU and ignored SIGTERM. Losing log lines is the lesser harm.
 */
export function writeLine(stream: NodeJS.WriteStream, line: string): void {
  const state = streams.get(stream) ?? watch(stream);
  if (state.broken) return;
  try {
    stream.write(line);
  } catch {
    state.broken = true;
  }
}

const streams = new Map<NodeJS.WriteStream, { broken: boolean }>();

function watch(stream: NodeJS.WriteStream): { broken: boolean } {
  const state = { broken: false };
  streams.set(stream, state);
  stream.on("error", () => {
    state.broken = true;
  });
  return state;
}

export type LogLevel = "debug" | "info" | "warn" | "error";
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

function envLevel(): LogLevel {
  const v = (process.env.MOONRING_LOG ?? "info").toLowerCase();
  return v in order ? (v as LogLevel) : "info";
}

export class Logger {
  private minLevel = order[envLevel()];
  constructor(private prefix: string) {}

  child(prefix: string): Logger {
    return new Logger(prefix);
  }
  setPrefix(prefix: string): void {
    this.prefix = prefix;
  }
  debug(msg: string): void {
    this.write("debug", msg);
  }
  info(msg: string): void {
    this.write("info", msg);
  }
  warn(msg: string): void {
    this.write("warn", msg);
  }
  error(msg: string): void {
    this.write("error", msg);
  }
  private write(level: LogLevel, msg: string): void {
    if (order[level] < this.minLevel) return;
    const ts = new Date().toISOString().slice(11, 23);
    writeLine(process.stderr, `${ts} ${level.padEnd(5)} [${this.prefix}] ${msg}\n`);
  }
}

export const log = new Logger("moonring");
