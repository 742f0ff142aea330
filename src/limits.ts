// Limits shared by every layer of the control plane.

import { MR_WORLD_SIZE_MAX } from "./native/abi";

/** Slots of a world: ranks 0..WORLD_SIZE_MAX-1 (moonring.h MR_WORLD_SIZE_MAX, via native/abi.ts). */
export const WORLD_SIZE_MAX = MR_WORLD_SIZE_MAX;
