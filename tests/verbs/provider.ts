// The test verbs provider (zig/src/verbs/fake_provider.zig, built by `zig build` next to
// libmoonring.so): a userspace "RDMA device" whose queue pairs talk over TCP, selected with
// MOONRING_VERBS_LIB. Tests that need it skip with a message when it is not built.
import { existsSync } from "node:fs";
import { ROOT } from "../support/launch-world";

export const PROVIDER = `${ROOT}zig/zig-out/lib/libmoonring_fakeverbs.so`;

/** Why verbs tests can't run here, or null. */
export function providerMissing(): string | null {
  return existsSync(PROVIDER) ? null : `${PROVIDER} is not built (run zig build)`;
}

/** Rank environment: every link over verbs through the test provider. */
export function verbsEnv(transport: "verbs" | "auto" = "verbs"): Record<string, string> {
  // MOONRING_BOARD=0: no same-host shared-memory board either, so every byte between ranks
  // crosses a verbs queue pair.
  return { MOONRING_TRANSPORT: transport, MOONRING_VERBS_LIB: PROVIDER, MOONRING_BOARD: "0" };
}
