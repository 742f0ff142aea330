// Small networking helpers: host:port parsing, free ports, URL building.
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

/** `count` consecutive free ports starting at some base (launch puts rank r on base + r). */
export async function freePortRange(count: number, host = "127.0.0.1"): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 40000);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portIsFree(base + i, host);
    if (ok) return base;
  }
  throw new Error(`no range of ${count} free ports found on ${host}`);
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
