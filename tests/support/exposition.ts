// A strict parser of Prometheus' text exposition format (0.0.4), for tests of /metrics.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/;

/** Parses the exposition format strictly; throws naming the line on anything off. */
export function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  if (!text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const seenSeries = new Set<string>();
  const closed = new Set<string>(); // families whose samples ended (a family's lines must be contiguous)
  let current = "";
  const samples: Sample[] = [];
  const familyOf = (name: string) => {
    for (const suffix of ["_bucket", "_sum", "_count"]) {
      const base = name.slice(0, -suffix.length);
      if (name.endsWith(suffix) && (types.get(base) === "histogram" || types.get(base) === "summary")) return base;
    }
    return name;
  };
  const enter = (family: string, line: string) => {
    if (family !== current) {
      if (closed.has(family)) throw new Error(`family ${family} is split: ${line}`);
      if (current) closed.add(current);
      current = family;
    }
  };
  for (const line of text.slice(0, -1).split("\n")) {
    if (line === "") throw new Error("empty line");
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta;
      if (!NAME.test(name!)) throw new Error(`bad metric name: ${line}`);
      enter(name!, line);
      if (kind === "HELP") {
        if (helps.has(name!)) throw new Error(`second HELP: ${line}`);
        helps.add(name!);
      } else {
        if (types.has(name!)) throw new Error(`second TYPE: ${line}`);
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest!)) throw new Error(`bad type: ${line}`);
        if (samples.some((s) => familyOf(s.name) === name)) throw new Error(`TYPE after samples: ${line}`);
        types.set(name!, rest!);
      }
      continue;
    }
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const [, name, , labelText, valueText] = m;
    const labels: Record<string, string> = {};
    let rest = labelText ?? "";
    while (rest.length) {
      const l = LABEL.exec(rest);
      if (!l) throw new Error(`bad labels: ${line}`);
      if (l[1]! in labels) throw new Error(`duplicate label: ${line}`);
      labels[l[1]!] = l[2]!;
      rest = rest.slice(l[0].length);
    }
    if (!/^([+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)|[+-]Inf|NaN)$/.test(valueText!)) throw new Error(`bad value: ${line}`);
    const family = familyOf(name!);
    if (!types.has(family)) throw new Error(`sample without TYPE: ${line}`);
    enter(family, line);
    const type = types.get(family);
    if (type === "counter" && !name!.endsWith("_total")) throw new Error(`counter not named _total: ${line}`);
    if (name!.endsWith("_bucket") && labels.le === undefined) throw new Error(`bucket without le: ${line}`);
    const series = `${name}{${Object.entries(labels).sort().map(([k, v]) => `${k}=${v}`).join(",")}}`;
    if (seenSeries.has(series)) throw new Error(`duplicate series: ${line}`);
    seenSeries.add(series);
    const value = valueText === "+Inf" ? Infinity : valueText === "-Inf" ? -Infinity : Number(valueText);
    if (type === "counter" && !(value >= 0)) throw new Error(`negative counter: ${line}`);
    samples.push({ name: name!, labels, value });
  }
  checkHistograms(samples, types);
  return { samples, types };
}

function checkHistograms(samples: Sample[], types: Map<string, string>): void {
  for (const [family, type] of types) {
    if (type !== "histogram") continue;
    const byKey = new Map<string, Sample[]>();
    for (const s of samples.filter((x) => x.name === `${family}_bucket`)) {
      const { le: _, ...rest } = s.labels;
      const k = JSON.stringify(rest);
      if (!byKey.has(k)) byKey.set(k, []);
      byKey.get(k)!.push(s);
    }
    for (const [k, buckets] of byKey) {
      let prevLe = -Infinity;
      let prev = 0;
      for (const b of buckets) {
        const le = b.labels.le === "+Inf" ? Infinity : Number(b.labels.le);
        if (!(le > prevLe)) throw new Error(`${family}${k}: le not increasing`);
        if (b.value < prev) throw new Error(`${family}${k}: buckets not cumulative`);
        prevLe = le;
        prev = b.value;
      }
      if (prevLe !== Infinity) throw new Error(`${family}${k}: no +Inf bucket`);
      const count = samples.find((s) => s.name === `${family}_count` && JSON.stringify(s.labels) === k);
      if (!count || count.value !== prev) throw new Error(`${family}${k}: _count != +Inf bucket`);
    }
  }
}

