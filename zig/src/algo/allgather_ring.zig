//! Ring allgather: this rank's block goes to its place in `recv`, then n-1 pipelined steps;
//! at step s a rank forwards block r-s to r+1 and receives block r-s-1 from r-1. No scratch.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.kind == .allgather);
    const n = comm.size;
    const r = comm.rank;
    const es: u64 = desc.elementBytes();
    const block_bytes = desc.count * es;
    const recv = common.bytesPtrMut(desc.recv, block_bytes * n);
    // Before anything is received: `send` may alias part of `recv` (in place).
    common.move(recv[r * block_bytes ..][0..block_bytes], common.bytesPtr(desc.send, block_bytes));
    if (n == 1 or block_bytes == 0) return;
    const next = common.modAdd(r, 1, n);
    const prev = common.modSub(r, 1, n);
    for (0..n - 1) |s| {
        const step: u32 = @intCast(s);
        const out_index = common.modSub(r, step, n);
        const in_index = common.modSub(r, step + 1, n);
        try common.exchange(
            comm,
            tuning,
            es,
            next,
            recv[out_index * block_bytes ..][0..block_bytes],
            prev,
            recv[in_index * block_bytes ..][0..block_bytes],
            .copy,
        );
    }
}
