//! C ABI exports of libmoonring (declared in ../include/moonring.h, checked by abi_check.zig).
const std = @import("std");
pub const ops = @import("ops_table");

comptime {
    // Exports that live beside what they wrap.
    _ = @import("cuda/exports.zig");
}

export fn mr_abi_version() u32 {
    return 1;
}

test {
    std.testing.refAllDecls(@This());
}
