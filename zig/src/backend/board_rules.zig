//! What a board op does, decided alike by every rank of its group from the op alone: which
//! contributions are copied into the board, who reads whom (eager groups run rooted ops one
//! way), and which two-rank ops go through the pair lanes (backend/board_direct.zig runs them).
const std = @import("std");
const op = @import("../op.zig");
const board_mod = @import("../transport/board.zig");

/// Contributions up to this size are always copied into the board (when they fit); larger ones
/// in shared buffers are read in place: from 2 KiB that is faster than the copy (E56).
pub const inline_always_bytes = 1 << 10;

/// Eager groups: rooted ops copy contributions up to this size into the board even from
/// shared buffers (measured, E55: broadcast's readers each read it all, so 8 KiB there).
pub fn eagerCopyBytesMax(kind: op.Collective) u64 {
    return switch (kind) {
        .broadcast => 8 << 10,
        .gather, .scatter, .reduce => 32 << 10,
        else => 0,
    };
}

comptime {
    // Lane contributions are always copied (board_direct contribution(): inline up to this size).
    std.debug.assert(board_mod.lane_bytes_max <= inline_always_bytes);
}

/// Whether an op of a two-rank group runs through the pair lanes: small enough for a lane
/// cell, both ranks below lane_peers_max. Every rank of the group computes the same answer.
pub fn usesLanes(kind: op.Collective, group: []const u32, count: u64, element_bytes: u64, lanes_on: bool) bool {
    if (!lanes_on or group.len != 2) return false;
    if (group[0] >= board_mod.lane_peers_max or group[1] >= board_mod.lane_peers_max) return false;
    const c = count * element_bytes;
    const sent_max: u64 = switch (kind) {
        .allreduce, .reduce, .broadcast, .allgather, .gather => c,
        .scatter, .reduce_scatter => 2 * c,
        .barrier => 0,
        else => return false, // alltoall: counts per rank (the entry's send_counts)
    };
    return sent_max <= board_mod.lane_bytes_max;
}

/// Whether group rank `reader` reads rank `owner`'s board entry in an op of `kind`: broadcast
/// and scatter read only the root; in reduce and gather only the root reads; the others read
/// every peer (`pair_reduce`: the two-rank reduce in halves, where both read each other).
pub fn reads(kind: op.Collective, reader: u32, root: u32, owner: u32, pair_reduce: bool, eager: bool) bool {
    std.debug.assert(reader != owner);
    if (!eager) return true; // everyone meets everyone: a rank returns when all are done
    return switch (kind) {
        .broadcast, .scatter => owner == root,
        .gather => reader == root,
        .reduce => reader == root or pair_reduce,
        else => true,
    };
}

/// Rooted ops and the barrier: a waiter there does not hand its CPU over early (E54).
pub fn rootedOrBarrier(kind: op.Collective) bool {
    return switch (kind) {
        .broadcast, .scatter, .gather, .reduce, .barrier => true,
        else => false,
    };
}

/// Allreduce up to this size: every rank reduces every contribution (one synchronisation, n x
/// the data read); above: reduce-scatter then copy (two, ~2 x). Team.allreduce_all_bytes
/// ($MOONRING_BOARD_ALLREDUCE_ALL, plan.Config) sets it for `n` ranks; every rank must agree.
/// Which ops run on the board at all is plan.boardRuns.
pub fn allreduceAllBytesMax(n: u32, allreduce_all_bytes: u64) u64 {
    std.debug.assert(n >= 2 and allreduce_all_bytes >= 1);
    return allreduce_all_bytes / (n - 1);
}
