// Tiny flag parser for the CLI: `--name value`, `--name=value`, boolean `--flag`.
// Unknown flags are an error (typos should not silently change behaviour).

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

export interface FlagSpec {
  /** "string" flags take a value; "boolean" flags take none. */
  type: "string" | "boolean";
  help: string;
}

export function parseFlags(
  argv: string[],
  spec: Record<string, FlagSpec>,
): { flags: Record<string, string | boolean | undefined>; rest: string[] } {
  const flags: Record<string, string | boolean | undefined> = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("--")) {
      rest.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const s = spec[name];
    if (!s) throw new UsageError(`unknown flag --${name}`);
    if (s.type === "boolean") {
      if (eq >= 0) {
        const v = arg.slice(eq + 1);
        if (!["true", "false", "1", "0"].includes(v)) throw new UsageError(`--${name} takes no value`);
        flags[name] = v === "true" || v === "1";
      } else {
        flags[name] = true;
      }
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      i++;
    }
    if (value === undefined) throw new UsageError(`--${name} needs a value`);
    flags[name] = value;
  }
  return { flags, rest };
}

export function intFlag(
  value: string | boolean | undefined,
  name: string,
  opts: { min?: number; max?: number } = {},
): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || !/^-?\d+$/.test(value.trim())) {
    throw new UsageError(`--${name} must be an integer, got ${JSON.stringify(value)}`);
  }
  const n = Number(value);
  if (opts.min !== undefined && n < opts.min) throw new UsageError(`--${name} must be >= ${opts.min}, got ${n}`);
  if (opts.max !== undefined && n > opts.max) throw new UsageError(`--${name} must be <= ${opts.max}, got ${n}`);
  return n;
}

/** Byte sizes: 1024, 64K, 16M, 1G (powers of 1024; "KiB" etc. accepted too). */
export function bytesFlag(value: string | boolean | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const m = typeof value === "string" ? /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(value.trim()) : null;
  if (!m) throw new UsageError(`--${name} must be a byte size like 1048576, 64K, 16M or 1G`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase()]!;
  return Number(m[1]) * mult;
}

export function helpText(usage: string, spec: Record<string, FlagSpec>, extra = ""): string {
  const lines = [usage, "", "Flags:"];
  for (const [name, s] of Object.entries(spec)) {
    const left = s.type === "string" ? `--${name} VALUE` : `--${name}`;
    lines.push(`  ${left.padEnd(26)} ${s.help}`);
  }
  if (extra) lines.push("", extra);
  return lines.join("\n");
}
