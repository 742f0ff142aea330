// Same-host callers proven by their user id, for `launch`'s per-job secret (MOONRING_LOCAL_USER_AUTH):
// a TCP connection from loopback is looked up in /proc/net/tcp{,6}, where the kernel lists the
// caller's socket with its owner's uid. A process of this rank's own user could read the secret
// from /proc/<pid>/environ anyway, so this lets in no one the secret keeps out, while every other
// user (and every other host) still needs the token.
import { readFile } from "node:fs/promises";

/** How long a connection's looked-up uid is reused (keep-alive connections make many calls). */
const CACHE_MS = 1000;
const CACHE_ENTRIES_MAX = 4096;
const cache = new Map<number, { uid: number | null; atMs: number }>();

const myUid = typeof process.getuid === "function" ? process.getuid() : -1;

export function isLoopback(address: string): boolean {
  return address.startsWith("127.") || address === "::1" || address.startsWith("::ffff:127.");
}

/**
 * Whether the peer of a loopback connection (its address and port) runs as this process's user.
 * Reads /proc off the event loop: with thousands of sockets (TIME_WAIT after test runs) one read
 * of /proc/net/tcp took 35 ms. Clients that send the token never get here.
 */
export async function peerIsThisUser(peer: { address: string; port: number } | null, serverPort: number): Promise<boolean> {
  if (!peer || myUid < 0 || !isLoopback(peer.address)) return false;
  const now = performance.now();
  const hit = cache.get(peer.port);
  if (hit && now - hit.atMs < CACHE_MS) return hit.uid === myUid;
  const uid = await lookupUid(peer.port, serverPort);
  if (cache.size >= CACHE_ENTRIES_MAX) cache.clear();
  cache.set(peer.port, { uid, atMs: now });
  return uid === myUid;
}

/** The uid owning the established socket whose local port is `clientPort` and peer port `serverPort`. */
async function lookupUid(clientPort: number, serverPort: number): Promise<number | null> {
  const local = `:${hex4(clientPort)}`;
  const remote = `:${hex4(serverPort)}`;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await readFile(table, "latin1");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...; st 01 = ESTABLISHED
      if (f.length > 7 && f[3] === "01" && f[1]!.endsWith(local) && f[2]!.endsWith(remote)) return Number(f[7]);
    }
  }
  return null;
}

function hex4(port: number): string {
  return port.toString(16).toUpperCase().padStart(4, "0");
}
