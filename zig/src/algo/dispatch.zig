//! The one entry point from the engine into the collective algorithms: validates an op, then
//! picks an algorithm by kind and size. Algorithms talk only to `transport.Comm`.
//!
//! | kind           | algorithm                                                         |
//! |----------------|-------------------------------------------------------------------|
//! | allreduce      | < small_bytes: recursive doubling (allreduce_rd), else ring       |
//! | reduce         | < small_bytes: binomial tree (reduce_tree), else pipelined chain  |
//! | broadcast      | < small_bytes: binomial tree (broadcast_tree), else pipelined chain |
//! | allgather      | ring (allgather_ring)                                             |
//! | gather/scatter | linear, windowed (gather_linear, scatter_linear)                  |
//! | reduce_scatter | ring (reduce_scatter_ring)                                        |
//! | alltoall       | pairwise exchange (alltoall_pairwise)                             |
//! | barrier        | dissemination (barrier_dissemination)                             |
//! | send/recv      | p2p                                                               |
//!
//! The choice is plan.algorithm (plan.zig). Groups whose ranks share a host run on the board
//! instead (backend/board_direct.zig, chosen by the planner before it gets here). A group of one copies send -> recv. Every reduction gives identical bytes on every rank.
//! On error an algorithm has waited for every request it posted before it returns.
const std = @import("std");
const transport = @import("../transport/transport.zig");
const op = @import("../op.zig");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");
const plan = @import("../plan.zig");

pub const Tuning = common.Tuning;

pub const allreduce_rd = @import("allreduce_rd.zig");
pub const allreduce_ring = @import("allreduce_ring.zig");
pub const reduce_tree = @import("reduce_tree.zig");
pub const reduce_chain = @import("reduce_chain.zig");
pub const broadcast_tree = @import("broadcast_tree.zig");
pub const broadcast_chain = @import("broadcast_chain.zig");
pub const allgather_ring = @import("allgather_ring.zig");
pub const gather_linear = @import("gather_linear.zig");
pub const scatter_linear = @import("scatter_linear.zig");
pub const reduce_scatter_ring = @import("reduce_scatter_ring.zig");
pub const alltoall_pairwise = @import("alltoall_pairwise.zig");
pub const barrier_dissemination = @import("barrier_dissemination.zig");
pub const p2p = @import("p2p.zig");


/// Runs one op of `desc` over `comm` (this rank's view of the op's group). `scratch` provides
/// bounded temporary buffers (see each algorithm; a few MiB at most, except in-place
/// alltoall); everything allocated is freed before returning. Invalid descriptors
/// (unsupported redop for the dtype, root out of the group, sizes that overflow, alltoall
/// counts not one per rank) fail with error.Protocol before any byte moves.
pub fn run(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    return runTuned(comm, desc, scratch, .{});
}

/// run() with explicit tuning (tests force algorithms and tiny slices with it). Every rank of
/// the op must pass the same tuning.
pub fn runTuned(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator, tuning: Tuning) transport.Error!void {
    tuning.assertValid();
    try validate(comm.size, comm.rank, desc);
    const n = comm.size;
    const bytes = desc.count * desc.elementBytes();
    if (n == 1) return runAlone(desc);
    // The planner names the algorithm (one table for the engine, the tests and this).
    switch (plan.algorithm(desc.kind, bytes, tuning)) {
        .allreduce_rd => try allreduce_rd.run(comm, desc, scratch, tuning),
        .allreduce_ring => try allreduce_ring.run(comm, desc, scratch, tuning),
        .reduce_tree => try reduce_tree.run(comm, desc, scratch, tuning),
        .reduce_chain => try reduce_chain.run(comm, desc, scratch, tuning),
        .broadcast_tree => try broadcast_tree.run(comm, desc, scratch, tuning),
        .broadcast_chain => try broadcast_chain.run(comm, desc, scratch, tuning),
        .allgather_ring => try allgather_ring.run(comm, desc, scratch, tuning),
        .gather_linear => try gather_linear.run(comm, desc, scratch, tuning),
        .scatter_linear => try scatter_linear.run(comm, desc, scratch, tuning),
        .reduce_scatter_ring => try reduce_scatter_ring.run(comm, desc, scratch, tuning),
        .alltoall_pairwise => try alltoall_pairwise.run(comm, desc, scratch, tuning),
        .barrier_dissemination => try barrier_dissemination.run(comm, desc, scratch, tuning),
        .p2p => try p2p.run(comm, desc, scratch, tuning),
        .alone, .backend => unreachable, // n > 1; backends are not run from here
    }
}

/// Checks `desc` for group rank `rank` of `n` (see run()).
pub fn validate(n: u32, rank: u32, desc: op.OpDesc) transport.Error!void {
    if (n == 0 or n > op.world_size_max or rank >= n) return error.Protocol;
    switch (desc.kind) {
        .allreduce, .reduce, .reduce_scatter => {
            if (!desc.redop.supports(desc.dtype.kind())) return error.Protocol;
        },
        else => {},
    }
    switch (desc.kind) {
        .reduce, .broadcast, .gather, .scatter => if (desc.root >= n) return error.Protocol,
        .send, .recv => if (desc.root >= n or desc.root == rank) return error.Protocol,
        else => {},
    }
    // Every byte count an algorithm forms must fit: count * element bytes * n.
    const es: u64 = desc.elementBytes();
    const bytes = std.math.mul(u64, desc.count, es) catch return error.Protocol;
    const bytes_n = std.math.mul(u64, bytes, n) catch return error.Protocol;
    if (bytes_n > std.math.maxInt(usize)) return error.Protocol;
    if (desc.kind == .alltoall) {
        if (desc.send_counts.len != n or desc.recv_counts.len != n) return error.Protocol;
        inline for (.{ desc.send_counts, desc.recv_counts }) |counts| {
            var total: u64 = 0;
            for (counts) |c| total = std.math.add(u64, total, c) catch return error.Protocol;
            const total_bytes = std.math.mul(u64, total, es) catch return error.Protocol;
            if (total_bytes > std.math.maxInt(usize)) return error.Protocol;
        }
        if (desc.send_counts[rank] != desc.recv_counts[rank]) return error.Protocol;
    }
}

/// A group of one: the result is this rank's own data (a reduction over one rank, avg
/// divided by 1 included).
fn runAlone(desc: op.OpDesc) transport.Error!void {
    const es: u64 = desc.elementBytes();
    const bytes: u64 = switch (desc.kind) {
        .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter => desc.count * es,
        .alltoall => desc.send_counts[0] * es,
        .barrier => 0,
        .send, .recv => unreachable, // validate(): no peer in a group of one
    };
    const recv = common.bytesPtrMut(desc.recv, bytes);
    common.move(recv, common.bytesPtr(desc.send, bytes));
    switch (desc.kind) {
        .allreduce, .reduce, .reduce_scatter => reduce.canonicalize(desc.dtype, recv),
        else => {},
    }
}

test {
    _ = common;
    _ = @import("test_collectives.zig");
}
