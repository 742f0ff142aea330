//! The one entry point from the engine into the collective algorithms: picks an algorithm by
//! op kind and size. Algorithms talk only to `transport.Comm`.
const std = @import("std");
const transport = @import("../transport/transport.zig");
const op = @import("../op.zig");

/// Runs one op of `desc` over `comm` (this rank's view of the op's group). `scratch` provides
/// bounded temporary buffers; everything allocated is freed before returning.
pub fn run(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    _ = comm;
    _ = desc;
    _ = scratch;
    return error.Protocol; // Algorithms land in following commits.
}
