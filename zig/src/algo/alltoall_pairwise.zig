//! Pairwise-exchange alltoall with uneven counts: at step s (1..n-1) rank r sends its block for
//! r+s while receiving the block from r-s, each step pipelined in slices; the own block is a
//! local copy. Counts are elements, blocks packed in group order.
//! Scratch: none, except in place (`send` overlapping `recv`): a copy of `send`.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    std.debug.assert(desc.kind == .alltoall);
    const n = comm.size;
    const r = comm.rank;
    std.debug.assert(desc.send_counts.len == n and desc.recv_counts.len == n);
    const es: u64 = desc.elementBytes();
    var send_offsets: [common.world_size_max + 1]u64 = undefined;
    var recv_offsets: [common.world_size_max + 1]u64 = undefined;
    send_offsets[0] = 0;
    recv_offsets[0] = 0;
    for (0..n) |j| {
        send_offsets[j + 1] = send_offsets[j] + desc.send_counts[j] * es;
        recv_offsets[j + 1] = recv_offsets[j] + desc.recv_counts[j] * es;
    }
    if (desc.send_counts[r] != desc.recv_counts[r]) return error.Protocol;
    var send = common.bytesPtr(desc.send, send_offsets[n]);
    const recv = common.bytesPtrMut(desc.recv, recv_offsets[n]);
    var copy: ?[]u8 = null;
    defer if (copy) |c| scratch.free(c);
    if (common.overlaps(send, recv)) {
        copy = try scratch.dupe(u8, send);
        send = copy.?;
    }
    common.move(recv[recv_offsets[r]..recv_offsets[r + 1]], send[send_offsets[r]..send_offsets[r + 1]]);
    for (1..n) |s| {
        const step: u32 = @intCast(s);
        const to = common.modAdd(r, step, n);
        const from = common.modSub(r, step, n);
        try common.exchange(
            comm,
            tuning,
            es,
            to,
            send[send_offsets[to]..send_offsets[to + 1]],
            from,
            recv[recv_offsets[from]..recv_offsets[from + 1]],
            .copy,
        );
    }
}
