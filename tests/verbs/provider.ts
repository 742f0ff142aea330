// The verbs library the verbs tests run against. By default the test verbs provider
// (zig/src/verbs/fake_provider.zig, built by `zig build` next to libmoonring.so): a userspace
// "RDMA device" whose queue pairs talk over TCP, selected with MOONRING_VERBS_LIB.
// MOONRING_TEST_VERBS=system runs the same tests on the machine's own libibverbs.so.1 and RDMA
// NIC instead (docs/verbs.md: validating on real hardware).
import { existsSync } from "node:fs";
import { ROOT } from "../support/launch-world";

// MOONRING_TEST_VERBS_PROVIDER: another build of it (scripts/gpu/run.sh: the carried one).
export const PROVIDER = process.env.MOONRING_TEST_VERBS_PROVIDER ?? `${ROOT}zig/zig-out/lib/libmoonring_fakeverbs.so`;
export const onSystemVerbs = process.env.MOONRING_TEST_VERBS === "system";

/** Why verbs tests can't run here, or null. */
export function providerMissing(): string | null {
  if (onSystemVerbs) return null;
  return existsSync(PROVIDER) ? null : `${PROVIDER} is not built (run zig build)`;
}

/** Rank environment: every link over verbs (through the test provider unless on system verbs). */
export function verbsEnv(transport: "verbs" | "auto" = "verbs"): Record<string, string> {
  // MOONRING_BOARD=0: no same-host shared-memory board either, so every byte between ranks
  // crosses a verbs queue pair.
  const env: Record<string, string> = { MOONRING_TRANSPORT: transport, MOONRING_BOARD: "0" };
  if (!onSystemVerbs) env.MOONRING_VERBS_LIB = PROVIDER;
  return env;
}

/** What GET /cluster's data_plane.verbs.detail names: the test provider's device, or any. */
export const expectedDevice = onSystemVerbs ? "" : "moonring_fake0";
