// Limits shared by every layer of the control plane.

/** Slots of a world: ranks 0..WORLD_SIZE_MAX-1. Equals moonring.h MR_WORLD_SIZE_MAX (tests/unit/limits.test.ts). */
export const WORLD_SIZE_MAX = 1024;
