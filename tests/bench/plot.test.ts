// The busbw-vs-size chart: well-formed SVG, one line per series, log-log placement; reading
// runs from JSON lines / arrays; `bench --plot out.svg run.json ...` from the command line.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseRecords, renderSvg, seriesFromRuns, sizeLabel, type Series } from "../../src/bench/plot";

/** Minimal XML well-formedness check: balanced tags, quoted attributes, known entities only. */
function checkXml(text: string): { elements: { name: string; attrs: Record<string, string> }[] } {
  const stack: string[] = [];
  const elements: { name: string; attrs: Record<string, string> }[] = [];
  let i = 0;
  let roots = 0;
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, "");
  while (i < body.length) {
    const lt = body.indexOf("<", i);
    const chunk = lt < 0 ? body.slice(i) : body.slice(i, lt);
    if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(chunk)) throw new Error(`bad entity in text ${JSON.stringify(chunk.slice(0, 40))}`);
    if (stack.length === 0 && chunk.trim() !== "") throw new Error(`text outside the root: ${JSON.stringify(chunk.slice(0, 40))}`);
    if (lt < 0) break;
    const gt = body.indexOf(">", lt);
    if (gt < 0) throw new Error("unterminated tag");
    const tag = body.slice(lt + 1, gt);
    i = gt + 1;
    if (tag.startsWith("/")) {
      const name = tag.slice(1).trim();
      if (stack.pop() !== name) throw new Error(`mismatched </${name}>`);
      continue;
    }
    const selfClose = tag.endsWith("/");
    const m = /^([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*\/?$/.exec(tag);
    if (!m) throw new Error(`malformed tag <${tag.slice(0, 60)}>`);
    const attrs: Record<string, string> = {};
    for (const a of m[2]!.matchAll(/([\w:-]+)="([^"]*)"/g)) {
      if (a[1]! in attrs) throw new Error(`duplicate attribute ${a[1]}`);
      if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(a[2]!)) throw new Error(`bad entity in attribute ${a[1]}`);
      attrs[a[1]!] = a[2]!;
    }
    if (stack.length === 0) roots++;
    elements.push({ name: m[1]!, attrs });
    if (!selfClose) stack.push(m[1]!);
  }
  if (stack.length) throw new Error(`unclosed <${stack.join("> <")}>`);
  if (roots !== 1) throw new Error(`${roots} root elements`);
  return { elements };
}

const series: Series[] = [
  { label: "moonring native", points: [8, 64, 512, 4096, 1 << 20, 64 << 20].map((b, i) => ({ bytes: b, value: 0.01 * 4 ** i })) },
  { label: "mpi <&> \"peer\"", dashed: true, points: [8, 64, 512, 4096, 1 << 20, 64 << 20].map((b, i) => ({ bytes: b, value: 0.02 * 3 ** i })) },
];

describe("renderSvg", () => {
  test("well-formed SVG with one polyline per series and a legend", () => {
    const svg = renderSvg(series, { title: "allreduce <2 ranks>" });
    const { elements } = checkXml(svg);
    expect(elements[0]!.name).toBe("svg");
    expect(elements[0]!.attrs.xmlns).toBe("http://www.w3.org/2000/svg");
    expect(elements.filter((e) => e.name === "polyline").length).toBe(2);
    expect(elements.filter((e) => e.name === "circle").length).toBe(12);
    expect(svg).toContain("mpi &lt;&amp;&gt; &quot;peer&quot;");
    expect(svg).toContain("allreduce &lt;2 ranks&gt;");
    expect(elements.filter((e) => e.name === "polyline")[1]!.attrs["stroke-dasharray"]).toBeDefined();
  });
  test("log-log placement: x by log2(size), y by log10(busbw)", () => {
    const svg = renderSvg([series[0]!]);
    const poly = checkXml(svg).elements.find((e) => e.name === "polyline")!;
    const pts = poly.attrs.points!.split(" ").map((p) => p.split(",").map(Number) as [number, number]);
    // sizes x8 apart -> equal x steps; values x4 apart -> equal y steps (upward = smaller y)
    const dx = pts.slice(1, 4).map((p, i) => p[0] - pts[i]![0]);
    expect(Math.max(...dx) - Math.min(...dx)).toBeLessThan(0.2);
    const dy = pts.slice(1).map((p, i) => p[1] - pts[i]![1]);
    for (const d of dy) expect(d).toBeLessThan(0);
    expect(Math.max(...dy) - Math.min(...dy)).toBeLessThan(0.2);
    // 4096 -> 1M is 8 doublings where 512 -> 4096 is 3
    expect((pts[4]![0] - pts[3]![0]) / (pts[3]![0] - pts[2]![0])).toBeCloseTo(8 / 3, 1);
  });
  test("points that a log axis cannot show (busbw 0) are left out; empty input still renders", () => {
    const svg = renderSvg([{ label: "x", points: [{ bytes: 8, value: 0 }, { bytes: 16, value: 1 }, { bytes: 32, value: 2 }] }]);
    expect(checkXml(svg).elements.filter((e) => e.name === "circle").length).toBe(2);
    expect(checkXml(renderSvg([])).elements[0]!.name).toBe("svg");
  });
  test("size labels", () => {
    expect(sizeLabel(8)).toBe("8");
    expect(sizeLabel(4096)).toBe("4K");
    expect(sizeLabel(64 << 20)).toBe("64M");
    expect(sizeLabel(1 << 30)).toBe("1G");
  });
});

describe("runs -> series", () => {
  const a = [
    '{"op":"allreduce","bytes":8,"busbw_gbps":0.1,"via":"native"}',
    "# a comment line of the table",
    '{"op":"allreduce","bytes":16,"busbw_gbps":0.2,"via":"native"}',
    '{"op":"allgather","bytes":16,"busbw_gbps":0.3,"via":"native"}',
  ].join("\n");
  const b = JSON.stringify([
    { peer: "mpi", op: "allreduce", bytes: 8, busbw_gbps: 0.5 },
    { peer: "mpi", op: "allreduce", bytes: 16, busbw_gbps: 0.6 },
  ]);
  test("parseRecords: JSON lines (other lines ignored) and arrays", () => {
    expect(parseRecords(a).length).toBe(3);
    expect(parseRecords(b).length).toBe(2);
  });
  test("one series per (file, source, op); labels keep only what differs", () => {
    const s = seriesFromRuns([
      { name: "run1", records: parseRecords(a) as never },
      { name: "run2", records: parseRecords(b) as never },
    ]);
    expect(s.map((x) => x.label).sort()).toEqual(["moonring native allgather", "moonring native allreduce", "mpi allreduce"]);
    expect(s.find((x) => x.label === "mpi allreduce")!.dashed).toBe(true);
    expect(s.find((x) => x.label === "moonring native allreduce")!.points).toEqual([
      { bytes: 8, value: 0.1 },
      { bytes: 16, value: 0.2 },
    ]);
    const one = seriesFromRuns([{ name: "only", records: parseRecords(a).filter((r) => r.op === "allreduce") as never }]);
    expect(one.map((x) => x.label)).toEqual(["moonring native"]);
    // two runs of the same source and op: the file names tell them apart
    const two = seriesFromRuns([
      { name: "before", records: parseRecords(a) as never },
      { name: "after", records: parseRecords(a) as never },
    ]);
    expect(two.map((x) => x.label).sort()).toEqual(["after allgather", "after allreduce", "before allgather", "before allreduce"]);
  });
});

describe("bench --plot FILE run.json ...", () => {
  const dir = mkdtempSync(join(tmpdir(), "moonring-plot-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const cli = new URL("../../src/cli.ts", import.meta.url).pathname;
  test("writes a chart of the given runs", async () => {
    writeFileSync(join(dir, "moonring.json"), '{"op":"allreduce","bytes":8,"busbw_gbps":0.1,"via":"native"}\n{"op":"allreduce","bytes":16,"busbw_gbps":0.2,"via":"native"}\n');
    writeFileSync(join(dir, "mpi.json"), '{"peer":"mpi","op":"allreduce","bytes":8,"busbw_gbps":0.3}\n{"peer":"mpi","op":"allreduce","bytes":16,"busbw_gbps":0.4}\n');
    const out = join(dir, "out.svg");
    const p = Bun.spawn([process.execPath, cli, "bench", "--plot", out, join(dir, "moonring.json"), join(dir, "mpi.json")], { stdout: "pipe", stderr: "pipe" });
    expect(await p.exited).toBe(0);
    const svg = readFileSync(out, "utf8");
    expect(checkXml(svg).elements.filter((e) => e.name === "polyline").length).toBe(2);
    expect(svg).toContain("moonring native");
    expect(svg).toContain(">mpi<");
  });
  test("a file without records is a usage error", async () => {
    writeFileSync(join(dir, "empty.json"), "nothing here\n");
    const p = Bun.spawn([process.execPath, cli, "bench", "--plot", join(dir, "x.svg"), join(dir, "empty.json")], { stdout: "pipe", stderr: "pipe" });
    expect(await p.exited).toBe(64);
    expect(await new Response(p.stderr).text()).toContain("no benchmark records");
  });
});
