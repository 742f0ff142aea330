// Small networking helpers: host:port parsing, free ports, URL building.
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

export function parseHostPort(value: string, defaultPort?: number): { host: string; port: number } {
  const v = value.trim().replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
  let host = v;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(v);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2];
  } else {
    const i = v.lastIndexOf(":");
    if (i >= 0 && v.indexOf(":") === i) {
      host = v.slice(0, i);
      portText = v.slice(i + 1);
    }
  }
  const port = portText !== undefined ? Number(portText) : defaultPort;
  if (!host) throw new Error(`invalid address ${JSON.stringify(value)}: missing host`);
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid address ${JSON.stringify(value)}: need HOST:PORT with a port in 1..65535`);
  }
  return { host, port };
}

export function httpUrl(host: string, port: number): string {
  return host.includes(":") ? `http://[${host}]:${port}` : `http://${host}:${port}`;
}

/**
 * `count` consecutive free ports starting at some base (launch puts rank r on base + r), all
 * outside the kernel's ephemeral range: a port free now but inside it can be handed to any
 * connect() or bind(0) (a data-plane listener, a rendezvous attempt) before its rank binds it
 * ("port ... is already in use"; 2 of some 300 test worlds did).
 */
export async function freePortRange(count: number, host = "127.0.0.1"): Promise<number> {
  const [lo, hi] = candidatePorts(count, ephemeralPorts());
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = lo + Math.floor(Math.random() * (hi - lo + 1));
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portIsFree(base + i, host);
    if (ok) return base;
  }
  throw new Error(`no range of ${count} free ports found on ${host}`);
}

/** The kernel's ephemeral port range (Linux: ip_local_port_range); its default elsewhere. */
export function ephemeralPorts(): [number, number] {
  try {
    const [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo! <= hi!) return [lo!, hi!];
  } catch {
    // not Linux: IANA's dynamic range (macOS, Windows)
  }
  return [49152, 65535];
}

/** Bases [lo, hi] for `count` ports from 10000 up that avoid `ephemeral` (the larger side). */
export function candidatePorts(count: number, ephemeral: [number, number]): [number, number] {
  const [elo, ehi] = ephemeral;
  const below: [number, number] = [10000, Math.min(elo, 65536) - count];
  const above: [number, number] = [Math.max(ehi + 1, 10000), 65536 - count];
  const room = (r: [number, number]) => r[1] - r[0];
  if (room(below) >= 0 || room(above) >= 0) return room(below) >= room(above) ? below : above;
  return [10000, 65536 - count]; // the ephemeral range covers everything: no choice
}

export function portIsFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
