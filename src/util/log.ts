// Minimal structured-ish logger: one line per event on stderr, prefixed with the rank.
// stdout is reserved for lines other programs parse (launch's "rank R ready ..." lines).

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
    process.stderr.write(`${ts} ${level.padEnd(5)} [${this.prefix}] ${msg}\n`);
  }
}

export const log = new Logger("moonring");
