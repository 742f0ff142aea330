// Messages between rank services (rendezvous registration, p2p offers): schemas and types.
// Below server/: the control plane uses the types, the internal routes parse with the schemas.
import { z } from "zod";
import { WORLD_SIZE_MAX } from "../limits";
import { dtypeNames } from "../ops/table";

const rank = z.number().int().min(0);

export const registerSchema = z.strictObject({
  rank,
  world_size: z.number().int().min(1).max(WORLD_SIZE_MAX),
  world_size_max: z.number().int().min(1).max(WORLD_SIZE_MAX).optional(),
  url: z.string().min(1),
  data_host: z.string().min(1),
  data_port: z.number().int().min(0).max(65535),
  host_id: z.string().regex(/^\d+$/),
  pid: z.number().int(),
  instance: z.string().min(1),
  join: z.boolean().optional(),
  /** UDP port of the rank's heartbeat thread (control/liveness.ts); absent: none. */
  hb_port: z.number().int().min(0).max(65535).optional(),
  /** Whether a restart of this rank rejoins by itself (docs/api-extensions.md "Rejoin"). */
  rejoin: z.enum(["auto", "manual"]).optional(),
});
export type RegisterBody = z.infer<typeof registerSchema>;

export const p2pOfferSchema = z.strictObject({
  src: rank,
  tag: z.string(),
  seq: z.number().int().min(0),
  dtype: z.enum(dtypeNames),
  shape: z.array(z.number().int().min(0)),
  timeout_ms: z.number().int().min(1),
});
export type P2POffer = z.infer<typeof p2pOfferSchema>;
