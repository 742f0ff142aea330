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

/// Whether an op of a two-rank group runs through the pair lanes: what one rank publishes
/// for the other fits a lane cell (scatter, reduce_scatter and alltoall publish only the
/// reader's part), both ranks below lane_peers_max. `alltoall_pair_count`: the larger of the
/// two ranks' counts for each other (both ranks see the same pair), so every rank of the
/// group computes the same answer.
pub fn usesLanes(kind: op.Collective, group: []const u32, count: u64, element_bytes: u64, alltoall_pair_count: u64, lanes_on: bool) bool {
    if (!lanes_on or group.len != 2) return false;
    if (group[0] >= board_mod.lane_peers_max or group[1] >= board_mod.lane_peers_max) return false;
    const sent_max: u64 = switch (kind) {
        .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter => count,
        .alltoall => alltoall_pair_count,
        .barrier => 0,
        else => return false,
    };
    return sent_max * element_bytes <= board_mod.lane_bytes_max;
}

/// The part of a contribution that rank `reader` of a lane op reads: [offset, offset + len).
pub fn lanePart(kind: op.Collective, reader: u32, part_bytes: u64, element_bytes: u64, send_counts: []const u64, contribution_bytes: u64) struct { offset: u64, len: u64 } {
    return switch (kind) {
        .scatter, .reduce_scatter => .{ .offset = reader * part_bytes, .len = part_bytes },
        .alltoall => .{ .offset = op.countsTotal(send_counts[0..reader]) * element_bytes, .len = send_counts[reader] * element_bytes },
        else => .{ .offset = 0, .len = contribution_bytes },
    };
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
