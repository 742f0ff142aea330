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

/// The algorithm files, by name (algorithms.zig: one line per file).
pub const algorithms = @import("algorithms.zig");


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
        .alone, .backend => unreachable, // n > 1; backends are not run from here
        inline else => |algorithm| try @field(algorithms, @tagName(algorithm)).run(comm, desc, scratch, tuning),
    }
}

/// Checks `desc` for group rank `rank` of `n` (see run()).
pub fn validate(n: u32, rank: u32, desc: op.OpDesc) transport.Error!void {
    if (n == 0 or n > op.world_size_max or rank >= n) return error.Protocol;
    if (desc.kind.reduces() and !desc.redop.supports(desc.dtype.kind())) return error.Protocol;
    if (desc.kind.rooted() and desc.root >= n) return error.Protocol;
    if ((desc.kind == .send or desc.kind == .recv) and desc.root == rank) return error.Protocol;
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
    std.debug.assert(desc.kind != .send and desc.kind != .recv); // validate(): no peer in a group of one
    // The table's recv shape for n = 1 (the root is this rank); send holds as many bytes.
    const send_bytes, const bytes = op.bufferBytes(desc.kind, desc.elementBytes(), desc.count, 1, true, desc.send_counts, desc.recv_counts);
    std.debug.assert(bytes == 0 or send_bytes == bytes);
    const recv = common.bytesPtrMut(desc.recv, bytes);
    common.move(recv, common.bytesPtr(desc.send, bytes));
    if (desc.kind.reduces()) reduce.canonicalize(desc.dtype, recv);
}

test {
    _ = common;
    _ = @import("test_collectives.zig");
}
