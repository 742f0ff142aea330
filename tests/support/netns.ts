// Network namespaces for tests that need separate "hosts" or partitions: each namespace gets a
// veth to a bridge in a hub namespace, its own address, and lo up; optionally a veth from this
// process's own namespace too (to reach the ranks directly). Needs root and `ip netns`.

export function sh(args: string[]): { ok: boolean; err: string } {
  const p = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  return { ok: p.exitCode === 0, err: p.stderr.toString().trim() };
}

export interface BridgedNamespaces {
  hub: string;
  /** namespaces[i] gets address addrs[i] (/24) on its veth v{i}; its peer h{i} is on the hub's bridge. */
  namespaces: string[];
  addrs: string[];
  /** A veth from this process's namespace onto the bridge, with this address (/24). */
  host?: { veth: string; addr: string };
}

/** Makes the namespaces and the bridge; null, or the step that failed and why. */
export function bridgeNamespaces(net: BridgedNamespaces): string | null {
  const { hub, host } = net;
  const steps: string[][] = [
    ["ip", "netns", "add", hub],
    ["ip", "-n", hub, "link", "add", "br0", "type", "bridge"],
    ["ip", "-n", hub, "link", "set", "br0", "up"],
  ];
  if (host) {
    steps.push(
      ["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "ht", "netns", hub],
      ["ip", "addr", "add", `${host.addr}/24`, "dev", host.veth],
      ["ip", "link", "set", host.veth, "up"],
      ["ip", "-n", hub, "link", "set", "ht", "master", "br0"],
      ["ip", "-n", hub, "link", "set", "ht", "up"],
    );
  }
  net.namespaces.forEach((ns, i) => {
    steps.push(
      ["ip", "netns", "add", ns],
      ["ip", "-n", ns, "link", "add", `v${i}`, "type", "veth", "peer", "name", `h${i}`, "netns", hub],
      ["ip", "-n", ns, "addr", "add", `${net.addrs[i]}/24`, "dev", `v${i}`],
      ["ip", "-n", ns, "link", "set", "lo", "up"],
      ["ip", "-n", ns, "link", "set", `v${i}`, "up"],
      ["ip", "-n", hub, "link", "set", `h${i}`, "master", "br0"],
      ["ip", "-n", hub, "link", "set", `h${i}`, "up"],
    );
  });
  for (const s of steps) {
    let r: { ok: boolean; err: string };
    try {
      r = sh(s);
    } catch (e) {
      return `${s.join(" ")}: ${(e as Error).message}`;
    }
    if (!r.ok) return `${s.join(" ")}: ${r.err || "failed"}`;
  }
  return null;
}

/** Removes what bridgeNamespaces made (deleting a namespace removes its veth pairs and the bridge). */
export function removeNamespaces(net: BridgedNamespaces): void {
  if (net.host) sh(["ip", "link", "del", net.host.veth]);
  for (const ns of [...net.namespaces, net.hub]) sh(["ip", "netns", "del", ns]);
}
