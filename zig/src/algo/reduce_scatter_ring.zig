//! Ring reduce-scatter: rank r ends with the reduction of block r of everyone's `send`.
//! At step s a rank sends its partial of block r-s-1 to r+1 and receives the partial of block
//! r-s-2 from r-1, into a copy of its own contribution to that block (`mine op incoming`);
//! after n-1 steps the partial of block r is complete. Blocks are processed in segments of
//! tuning.segment_bytes so scratch stays bounded; each step is pipelined in slices.
//! `recv` may alias `send` (its first block or block r): it is written only at the end of each
//! segment, after the segment's own contributions have been read.
//! Scratch: 2 segments + tuning.depth slices (6 MiB by default).
const std = @import("std");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .reduce_scatter);
    const n = comm.size;
    const r = comm.rank;
    const es: u64 = desc.elementBytes();
    const block_bytes = desc.count * es;
    const send = common.bytesPtr(desc.send, block_bytes * n);
    const recv = common.bytesPtrMut(desc.recv, block_bytes);
    if (n == 1) {
        common.move(recv, send);
        return; // avg over one rank divides by 1
    }
    if (block_bytes == 0) return;

    const segment = tuning.segmentBytes(es);
    const partial_bytes = @min(segment, block_bytes);
    const buffers = try scratch.alloc(u8, @intCast(2 * partial_bytes + common.reduceTmpBytes(tuning, es, partial_bytes)));
    defer scratch.free(buffers);
    const partials = [2][]u8{ buffers[0..partial_bytes], buffers[partial_bytes..][0..partial_bytes] };
    const tmp = buffers[2 * partial_bytes ..];
    const next = common.modAdd(r, 1, n);
    const prev = common.modSub(r, 1, n);

    var offset: u64 = 0;
    while (offset < block_bytes) : (offset += segment) {
        const len = @min(segment, block_bytes - offset);
        var out: []const u8 = mine(send, block_bytes, common.modSub(r, 1, n), offset, len);
        for (0..n - 1) |s| {
            const step: u32 = @intCast(s);
            const into = partials[s % 2][0..len];
            @memcpy(into, mine(send, block_bytes, common.modSub(r, step + 2, n), offset, len));
            try common.exchange(comm, tuning, es, next, out, prev, into, .{ .reduce = .{
                .dtype = desc.dtype,
                .redop = desc.redop,
                .tmp = tmp,
            } });
            out = into;
        }
        common.move(recv[offset..][0..len], out);
    }
    if (desc.redop == .avg) reduce.finalizeAvg(desc.dtype, recv, n);
}

fn mine(send: []const u8, block_bytes: u64, index: u32, offset: u64, len: u64) []const u8 {
    return send[index * block_bytes + offset ..][0..len];
}
