//! Dissemination barrier: ceil(log2(n)) rounds; in round k a rank signals r + 2^k and waits
//! for r - 2^k. After the last round every rank has (transitively) heard from every other.
const std = @import("std");
const common = @import("common.zig");

pub fn run(comm: common.Comm, desc: common.OpDesc, scratch: std.mem.Allocator, tuning: common.Tuning) common.Error!void {
    _ = scratch;
    std.debug.assert(desc.kind == .barrier);
    const n = comm.size;
    const token_out = [1]u8{1};
    var token_in = [1]u8{0};
    var distance: u32 = 1;
    while (distance < n) : (distance <<= 1) {
        const to = common.modAdd(comm.rank, distance, n);
        const from = common.modSub(comm.rank, distance, n);
        try common.exchange(comm, tuning, 1, to, &token_out, from, &token_in, .copy);
        if (token_in[0] != 1) return error.Protocol;
        token_in[0] = 0;
    }
}
