//! Binomial-tree reduce for small messages, any root: log2(n) rounds; in round `mask` a rank
//! whose virtual rank (relative to the root) has bit `mask` set sends its partial result to
//! virtual rank - mask and is done; the others fold in the partial of virtual rank + mask.
//! Each rank combines `mine op child` in a fixed order, so the result is deterministic.
//! Scratch: up to two buffers of the message size on inner ranks (used below
//! tuning.small_bytes); none on leaves and on the root beyond one receive buffer.
const std = @import("std");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .reduce);
    std.debug.assert(desc.root < comm.size);
    const n = comm.size;
    const es: u64 = desc.elementBytes();
    const bytes = desc.count * es;
    const is_root = comm.rank == desc.root;
    const send = common.bytesPtr(desc.send, bytes);
    const vr = common.virtualRank(comm.rank, desc.root, n);
    // Children exist below the lowest set bit of vr (any bit for the root).
    const has_children = vr + 1 < n and (vr == 0 or (vr & 1) == 0);

    var acc_mut: ?[]u8 = null;
    var acc_owned: ?[]u8 = null;
    defer if (acc_owned) |a| scratch.free(a);
    if (is_root) {
        const recv = common.bytesPtrMut(desc.recv, bytes);
        common.move(recv, send);
        acc_mut = recv;
    } else if (has_children and bytes > 0) {
        acc_owned = try scratch.alloc(u8, @intCast(bytes));
        @memcpy(acc_owned.?, send);
        acc_mut = acc_owned;
    }
    if (n == 1 or bytes == 0) return;

    const tmp: []u8 = if (has_children) try scratch.alloc(u8, @intCast(bytes)) else &.{};
    defer if (has_children) scratch.free(tmp);

    var mask: u32 = 1;
    while (mask < n) : (mask <<= 1) {
        if (vr & mask != 0) {
            const parent = common.realRank(vr - mask, desc.root, n);
            const acc: []const u8 = acc_mut orelse send;
            try common.sendBytes(comm, tuning, es, parent, acc);
            break;
        }
        if (vr + mask < n) {
            const child = common.realRank(vr + mask, desc.root, n);
            try common.recvBytes(comm, tuning, es, child, tmp);
            reduce.reduceInto(desc.dtype, desc.redop, acc_mut.?, tmp);
        }
    }
    if (is_root and desc.redop == .avg) reduce.finalizeAvg(desc.dtype, acc_mut.?, n);
}
