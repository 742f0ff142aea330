//! The kernels of cuda/kernels.cu: the table one module provides, every name the op table
//! asks for, and the embedded fatbin (moved from driver.zig).
const std = @import("std");
const driver = @import("driver.zig");
const CUfunction = driver.CUfunction;
const DType = driver.DType;
const RedOp = driver.RedOp;

pub const redop_values = std.enums.values(RedOp);
pub const dtype_values = std.enums.values(DType);

/// The kernels of cuda/kernels.cu that one module provides, by (redop, dtype).
pub const Kernels = struct {
    /// mr_reduce_<redop>_<dtype>: dst = dst op src.
    reduce: std.enums.EnumArray(RedOp, std.enums.EnumArray(DType, ?CUfunction)),
    /// mr_reduce2_<redop>_<dtype>: dst = a op b.
    reduce2: std.enums.EnumArray(RedOp, std.enums.EnumArray(DType, ?CUfunction)),
    /// mr_reduceN_<redop>_<dtype>: dst = s0 op s1 op ... (<= reduce_sources_max sources).
    reduceN: std.enums.EnumArray(RedOp, std.enums.EnumArray(DType, ?CUfunction)),
    /// mr_scale_<dtype> (float dtypes): dst = dst / divisor.
    scale: std.enums.EnumArray(DType, ?CUfunction),
    copy_strided: CUfunction,
};

/// Every kernel name the module must have (derived from the op table, like the .cu's X-macros).
pub const kernel_names: []const [:0]const u8 = blk: {
    @setEvalBranchQuota(100_000);
    var names: []const [:0]const u8 = &.{};
    for (redop_values) |r| for (dtype_values) |d| if (r.supports(d.kind())) {
        for ([_][]const u8{ "mr_reduce_", "mr_reduce2_", "mr_reduceN_" }) |prefix| {
            names = names ++ &[_][:0]const u8{prefix ++ @tagName(r) ++ "_" ++ @tagName(d)};
        }
    };
    for (dtype_values) |d| if (d.kind() == .float) {
        names = names ++ &[_][:0]const u8{"mr_scale_" ++ @tagName(d)};
    };
    names = names ++ &[_][:0]const u8{"mr_copy_strided"};
    break :blk names;
};

/// The fatbin built from cuda/kernels.cu (zig/build.zig), embedded in this library.
pub const fatbin: []const u8 = @embedFile("moonring_fatbin");
pub const fatbin_magic: u32 = 0xBA55ED50;

// ---- tests (no GPU needed) ---------------------------------------------------------------------

const testing = std.testing;

test "the embedded fatbin has every kernel the op table asks for" {
    try testing.expectEqual(fatbin_magic, std.mem.readInt(u32, fatbin[0..4], .little));
    // extern "C" names are NUL-delimited strings of each cubin's ELF string table.
    for (kernel_names) |name| {
        var needle_buf: [96]u8 = undefined;
        const needle = try std.fmt.bufPrint(&needle_buf, "\x00{s}\x00", .{name});
        if (std.mem.indexOf(u8, fatbin, needle) == null) {
            std.debug.print("kernel {s} missing from the fatbin (cuda/kernels.cu out of sync with src/ops/table.json?)\n", .{name});
            return error.TestUnexpectedResult;
        }
    }
    // 3 reduce kernels per supported (redop, dtype) pair, a scale per float dtype, one copy.
    var pairs: usize = 0;
    var floats: usize = 0;
    for (redop_values) |r| for (dtype_values) |d| {
        if (r.supports(d.kind())) pairs += 1;
    };
    for (dtype_values) |d| if (d.kind() == .float) {
        floats += 1;
    };
    try testing.expectEqual(3 * pairs + floats + 1, kernel_names.len);
}
