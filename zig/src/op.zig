//! One operation as the algorithms see it: group-local ranks, typed element counts, buffers.
//! The engine builds an OpDesc from mr_submit()'s arguments (global ranks -> group order).
const std = @import("std");
const ops = @import("ops_table");

pub const DType = ops.DType;
pub const RedOp = ops.RedOp;
pub const Collective = ops.Collective;
pub const NativeShape = ops.NativeShape;

/// Ranks of the world (slots). A group crosses the C ABI as a bitset of `rank_words_max` u64
/// words (mr_submit's `ranks`), bit r of word r/64 = global rank r.
pub const world_size_max = 1024;
pub const rank_words_max = world_size_max / 64;

pub const OpDesc = struct {
    kind: Collective,
    dtype: DType,
    redop: RedOp,
    /// Group rank of the root (reduce/gather dst, broadcast/scatter src) or the p2p peer.
    root: u32,
    /// Element counts, per the "native op shapes" table in docs/architecture.md:
    ///   allreduce: send/recv `count` · reduce: send `count`, recv `count` on root ·
    ///   broadcast: recv `count` (root's data in send, or in recv when send == recv) ·
    ///   allgather: send `count`, recv `count * n` · gather: send `count`, recv `count * n` on root ·
    ///   scatter: send `count * n` on root, recv `count` · reduce_scatter: send `count * n`, recv `count` ·
    ///   alltoall: send_counts / recv_counts per group rank, packed in group order ·
    ///   barrier: nothing · send: send `count` to root · recv: recv `count` from root.
    count: u64,
    send_counts: []const u64 = &.{},
    recv_counts: []const u64 = &.{},
    send: [*]const u8,
    recv: [*]u8,

    pub fn elementBytes(self: OpDesc) u64 {
        return self.dtype.bytes();
    }
};

/// Bytes of one rank's send and recv buffers (the "native op shapes" above, from the op table;
/// one formula for the engine, the board and the CUDA direct path). alltoall: the rank's counts,
/// group order.
pub fn bufferBytes(kind: Collective, elem_bytes: u64, count: u64, n: u64, is_root: bool, send_counts: []const u64, recv_counts: []const u64) struct { u64, u64 } {
    const send = if (kind.sendOnRootOnly() and !is_root) 0 else shapeElements(kind.sendShape(), count, n, send_counts);
    const recv = if (kind.recvOnRootOnly() and !is_root) 0 else shapeElements(kind.recvShape(), count, n, recv_counts);
    return .{ send * elem_bytes, recv * elem_bytes };
}

fn shapeElements(shape: NativeShape, count: u64, n: u64, counts: []const u64) u64 {
    return switch (shape) {
        .none => 0,
        .count => count,
        .count_n => count * n,
        .counts => countsTotal(counts),
    };
}

pub fn countsTotal(counts: []const u64) u64 {
    var total: u64 = 0;
    for (counts) |k| total += k;
    return total;
}

comptime {
    std.debug.assert(world_size_max % 64 == 0 and world_size_max >= 64);
}

test "bufferBytes: the table's native op shapes" {
    const c: u64 = 3;
    const e: u64 = 4;
    const counts = [_]u64{ 1, 2, 3 };
    const none = [_]u64{};
    try std.testing.expectEqual(.{ c * e, c * e }, bufferBytes(.allreduce, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ c * e, 0 }, bufferBytes(.reduce, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ c * e, c * e }, bufferBytes(.reduce, e, c, 3, true, &none, &none));
    try std.testing.expectEqual(.{ 0, c * e }, bufferBytes(.broadcast, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ c * e, 3 * c * e }, bufferBytes(.allgather, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ c * e, 0 }, bufferBytes(.gather, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ 3 * c * e, c * e }, bufferBytes(.scatter, e, c, 3, true, &none, &none));
    try std.testing.expectEqual(.{ 3 * c * e, c * e }, bufferBytes(.reduce_scatter, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ 6 * e, 3 * e }, bufferBytes(.alltoall, e, 0, 3, false, &counts, counts[0..2]));
    try std.testing.expectEqual(.{ 0, 0 }, bufferBytes(.barrier, e, c, 3, false, &none, &none));
    try std.testing.expectEqual(.{ c * e, 0 }, bufferBytes(.send, e, c, 2, false, &none, &none));
    try std.testing.expectEqual(.{ 0, c * e }, bufferBytes(.recv, e, c, 2, false, &none, &none));
}
