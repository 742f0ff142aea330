// Standing REST fuzz (issue 18), run by scripts/fuzz-rest.sh: a launched world of one rank
// (token on, small body/tensor limits so generated shapes can't eat the machine), schemathesis
// against its /openapi.json with a fixed seed and a bounded number of cases per operation,
// then: the rank still answers /health. Prints the request count and every finding (no 5xx
// other than the documented 503/504, no undocumented status, no hang); exit 1 on any.
// Usage: bun tests/fuzz/rest-fuzz.ts SCHEMATHESIS [--examples N] [--seed S]
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePortRange, sleep } from "../../src/util/net";
import { CLI, collect } from "../support/launch-world";

const [st, ...rest] = process.argv.slice(2);
if (!st) throw new Error("usage: rest-fuzz.ts SCHEMATHESIS [--examples N] [--seed S]");
const flag = (name: string, dflt: string) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1]! : dflt;
};
const examples = flag("--examples", "50");
const seed = flag("--seed", "18");
/** The whole run must end in this time, else it is a hang (a finding). */
const RUN_LIMIT_MS = 8 * 60_000;

const port = await freePortRange(1);
const token = crypto.randomUUID().replace(/-/g, "");
const url = `http://127.0.0.1:${port}`;
const env = { ...(process.env as Record<string, string>), MOONRING_TOKEN: token, MOONRING_LOG: "error" };
const launch = Bun.spawn([process.execPath, CLI, "launch", "--nproc", "1", "--port", String(port), "--max-body-bytes", "4M", "--max-tensor-bytes", "1M"], {
  stdin: "ignore",
  stdout: "pipe",
  stderr: "pipe",
  env,
});
const lines: string[] = [];
collect(launch.stdout, lines);
const errText = collect(launch.stderr, []);
const reportDir = mkdtempSync(join(tmpdir(), "moonring-fuzz-"));
const findings: string[] = [];
let requests = 0;
try {
  const until = Date.now() + 60_000;
  while (!lines.some((l) => l.startsWith("rank 0 ready"))) {
    if (launch.exitCode !== null || Date.now() > until) throw new Error(`launch did not get ready:\n${errText.text()}`);
    await sleep(50);
  }
  const args = [
    "--config-file", new URL("schemathesis.toml", import.meta.url).pathname,
    "run", `${url}/openapi.json`,
    "--seed", seed,
    "--max-examples", examples,
    "--phases", "examples,coverage,fuzzing",
    "--checks", "not_a_server_error,status_code_conformance",
    "--exclude-path", "/dashboard/events", // a server-sent event stream: never ends, by design
    "--request-timeout", "20",
    "--workers", "1",
    "--max-failures", "1000",
    "-H", `Authorization: Bearer ${token}`,
    "--report", "ndjson",
    "--report-dir", reportDir,
    "--no-shrink",
  ];
  console.log(`[fuzz-rest] schemathesis against ${url} (seed ${seed}, ${examples} cases per operation)`);
  // cwd: the report dir, so schemathesis's .schemathesis/ cache stays out of the checkout
  const run = Bun.spawn([st, "--no-color", ...args], { cwd: reportDir, stdout: "pipe", stderr: "pipe", env: { ...process.env, SCHEMATHESIS_HOOKS: "" } });
  const out = collect(run.stdout, []);
  const err = collect(run.stderr, []);
  const code = await Promise.race([run.exited, sleep(RUN_LIMIT_MS).then(() => "hang" as const)]);
  if (code === "hang") {
    run.kill("SIGKILL");
    findings.push(`schemathesis did not finish within ${RUN_LIMIT_MS / 1000} s (a request hangs?)`);
  }
  const text = out.text() + err.text();
  // every request the run made: one per "step" in the ndjson events
  for (const f of readdirSync(reportDir).filter((x) => x.endsWith(".ndjson"))) {
    for (const line of readFileSync(join(reportDir, f), "utf8").split("\n")) {
      if (!line) continue;
      requests += (line.match(/"response":\s*\{/g) ?? []).length;
    }
  }
  const summary = text.split("\n").filter((l) => /generated|failures|Failures|ST\d{3}|Test cases/.test(l));
  console.log(summary.join("\n"));
  if (code !== 0 && code !== "hang") findings.push(`schemathesis exited with ${code}:\n${text.slice(text.indexOf("FAILURES") >= 0 ? text.indexOf("FAILURES") : 0).slice(0, 20_000)}`);
  const health = await fetch(`${url}/health`, { signal: AbortSignal.timeout(10_000) }).catch((e) => e as Error);
  if (health instanceof Error || health.status !== 200) findings.push(`the rank does not answer /health after the run: ${health instanceof Error ? health.message : health.status}`);
  if (launch.exitCode !== null) findings.push(`the launched rank exited during the run (${launch.exitCode}):\n${errText.text().slice(-4000)}`);
} finally {
  launch.kill("SIGTERM");
  await Promise.race([launch.exited, sleep(10_000)]);
  if (launch.exitCode === null) launch.kill("SIGKILL");
  rmSync(reportDir, { recursive: true, force: true });
}
console.log(`[fuzz-rest] ${requests} requests, ${findings.length} finding(s)`);
for (const f of findings) console.log(`[fuzz-rest] FINDING: ${f}`);
process.exit(findings.length ? 1 : 0);
