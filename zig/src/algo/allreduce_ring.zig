//! Ring allreduce for large messages: ring reduce-scatter then ring allgather of the reduced
//! blocks, working in place in `recv`. Block b is reduced by one chain of ranks in a fixed
//! order (rank b+1 first ... rank b last) and then only copied, so every rank ends with
//! identical bytes. Each step is pipelined in slices (common.exchange): while one slice is
//! reduced the next is in flight.
//! Scratch: tuning.depth slices (2 MiB by default), independent of the message size.
const std = @import("std");
const common = @import("common.zig");
const reduce = @import("../reduce.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .allreduce);
    const n = comm.size;
    const r = comm.rank;
    const es: u64 = desc.elementBytes();
    const recv = common.bytesPtrMut(desc.recv, desc.count * es);
    const send = common.bytesPtr(desc.send, desc.count * es);
    if (n == 1 or desc.count == 0) {
        common.move(recv, send);
        return; // avg over one rank divides by 1
    }
    // P2 (bench/NOTES.md E1): no up-front copy of send into recv; the first reduce-scatter
    // send reads `send`, and each reduce writes recv[b] = send[b] op incoming slice by slice.
    std.debug.assert(send.ptr == recv.ptr or !common.overlaps(send, recv));
    {
        const block_bytes_max = common.block(desc.count, n, 0).len * es;
        const tmp = try scratch.alloc(u8, common.reduceTmpBytes(tuning, es, block_bytes_max));
        defer scratch.free(tmp);
        const next = common.modAdd(r, 1, n);
        const prev = common.modSub(r, 1, n);

        // Reduce-scatter: at step s send block r-s-1, receive and reduce block r-s-2. After
        // n-1 steps block r is complete here.
        for (0..n - 1) |s| {
            const step: u32 = @intCast(s);
            const out_index = common.modSub(r, step + 1, n);
            const out = if (step == 0) blockConst(send, desc.count, n, out_index, es) else blockBytes(recv, desc.count, n, out_index, es);
            const into_index = common.modSub(r, step + 2, n);
            const into = blockBytes(recv, desc.count, n, into_index, es);
            try common.exchange(comm, tuning, es, next, out, prev, into, .{ .reduce = .{
                .dtype = desc.dtype,
                .redop = desc.redop,
                .tmp = tmp,
                .mine = blockConst(send, desc.count, n, into_index, es),
            } });
        }
        if (desc.redop == .avg) reduce.finalizeAvg(desc.dtype, blockBytes(recv, desc.count, n, r, es), n);

        // Allgather: at step s send block r-s, receive block r-s-1.
        for (0..n - 1) |s| {
            const step: u32 = @intCast(s);
            const out = blockBytes(recv, desc.count, n, common.modSub(r, step, n), es);
            const into = blockBytes(recv, desc.count, n, common.modSub(r, step + 1, n), es);
            try common.exchange(comm, tuning, es, next, out, prev, into, .copy);
        }
    }
}

fn blockConst(buf: []const u8, count: u64, n: u32, index: u32, es: u64) []const u8 {
    const b = common.block(count, n, index);
    return buf[b.start * es ..][0 .. b.len * es];
}

fn blockBytes(buf: []u8, count: u64, n: u32, index: u32, es: u64) []u8 {
    const b = common.block(count, n, index);
    return buf[b.start * es ..][0 .. b.len * es];
}
