//! Build-time generator: reads src/ops/table.json (the one op x dtype table) and writes
//! ops_table.zig (Zig enums for the ABI) and ops_table.cuh (X-macros that instantiate the
//! CUDA kernels). Usage: gen_ops TABLE.json OUT.zig OUT.cuh
const std = @import("std");

const DType = struct { name: []const u8, short: []const u8, code: u32, bytes: u32, kind: []const u8, c_type: []const u8 };
const RedOp = struct { name: []const u8, code: u32, kinds: []const []const u8, bool_as: ?[]const u8 = null };
/// What a collective is (table.json "collective_fields" says what each field means).
const Collective = struct {
    name: []const u8,
    code: u32,
    rest: bool,
    root: ?[]const u8,
    reduces: bool,
    input: []const u8,
    input_on: []const u8,
    output: []const u8,
    output_on: []const u8,
    octet: bool,
    send: []const u8,
    send_on: []const u8,
    recv: []const u8,
    recv_on: []const u8,
    send_in_recv: bool,
    algorithm: []const u8,
    board: bool,
    cuda_direct: bool,
    summary: []const u8 = "",
};
const Table = struct {
    comment: []const u8 = "",
    collective_fields: []const u8 = "",
    dtypes: []const DType,
    redops: []const RedOp,
    collectives: []const Collective,
};

/// The Collective enum with what each collective is: rooted, reduces, and one rank's native
/// send/recv buffer (op.bufferBytes computes the bytes from these).
fn writeCollectives(z: anytype, collectives: []const Collective) !void {
    try z.writeAll("/// One rank's native buffer in elements: count, count x members, alltoall's counts, nothing.\n");
    try z.writeAll("pub const NativeShape = enum { none, count, count_n, counts };\n\n");
    try z.writeAll("pub const Collective = enum(u32) {\n");
    for (collectives) |c| try z.print("    {s} = {d},\n", .{ c.name, c.code });
    try z.writeAll("\n    /// Has a root (reduce/gather dst, broadcast/scatter src; the peer of send/recv).\n");
    try z.writeAll("    pub fn rooted(self: Collective) bool {\n        return switch (self) {\n");
    for (collectives) |c| try z.print("            .{s} => {},\n", .{ c.name, c.root != null });
    try z.writeAll("        };\n    }\n\n    /// Takes a reduce op.\n");
    try z.writeAll("    pub fn reduces(self: Collective) bool {\n        return switch (self) {\n");
    for (collectives) |c| try z.print("            .{s} => {},\n", .{ c.name, c.reduces });
    inline for (.{ "send", "recv" }) |side| {
        try z.print("        }};\n    }}\n\n    /// One rank's native {s} buffer.\n", .{side});
        try z.print("    pub fn {s}Shape(self: Collective) NativeShape {{\n        return switch (self) {{\n", .{side});
        for (collectives) |c| try z.print("            .{s} => .{s},\n", .{ c.name, @field(c, side) });
        try z.print("        }};\n    }}\n\n    /// The {s} buffer exists on the root only.\n", .{side});
        try z.print("    pub fn {s}OnRootOnly(self: Collective) bool {{\n        return switch (self) {{\n", .{side});
        for (collectives) |c| try z.print("            .{s} => {},\n", .{ c.name, std.mem.eql(u8, @field(c, side ++ "_on"), "root") });
    }
    try z.writeAll("        };\n    }\n\n");
    try writeFlag(z, collectives, "sendInRecv", "send_in_recv", "The send buffer may be omitted: the data is read from recv (in place).");
    try writeFlag(z, collectives, "board", "board", "The same-host board backend runs it (backend/board_direct.zig).");
    try writeFlag(z, collectives, "cudaDirect", "cuda_direct", "The CUDA IPC direct backend runs it (backend/cuda_direct.zig).");
    try z.writeAll("    /// The algorithm file (zig/src/algo/<name>.zig) the links path runs unless plan.zig picks\n");
    try z.writeAll("    /// another by size.\n    pub fn algorithm(self: Collective) []const u8 {\n        return switch (self) {\n");
    for (collectives) |c| try z.print("            .{s} => \"{s}\",\n", .{ c.name, c.algorithm });
    try z.writeAll("        };\n    }\n};\n");
}

/// One boolean method of Collective from a table field.
fn writeFlag(z: anytype, collectives: []const Collective, comptime method: []const u8, comptime field: []const u8, comptime doc: []const u8) !void {
    try z.writeAll("    /// " ++ doc ++ "\n    pub fn " ++ method ++ "(self: Collective) bool {\n        return switch (self) {\n");
    for (collectives) |c| try z.print("            .{s} => {},\n", .{ c.name, @field(c, field) });
    try z.writeAll("        };\n    }\n\n");
}

fn supports(op: RedOp, kind: []const u8) bool {
    for (op.kinds) |k| if (std.mem.eql(u8, k, kind)) return true;
    return false;
}

pub fn main() !void {
    var arena_state = std.heap.ArenaAllocator.init(std.heap.page_allocator);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    const args = try std.process.argsAlloc(arena);
    if (args.len != 4) std.debug.panic("usage: gen_ops TABLE.json OUT.zig OUT.cuh", .{});
    const text = try std.fs.cwd().readFileAlloc(arena, args[1], 1 << 20);
    const table = try std.json.parseFromSliceLeaky(Table, arena, text, .{});

    var zig_out = std.ArrayList(u8).init(arena);
    const z = zig_out.writer();
    try z.writeAll("//! Generated by zig/tools/gen_ops.zig from src/ops/table.json. Do not edit.\n\n");
    try z.writeAll("pub const DTypeKind = enum { float, int, bool };\n\n");
    try z.writeAll("pub const DType = enum(u32) {\n");
    for (table.dtypes) |d| try z.print("    {s} = {d},\n", .{ d.short, d.code });
    try z.writeAll("\n    pub fn bytes(self: DType) u32 {\n        return switch (self) {\n");
    for (table.dtypes) |d| try z.print("            .{s} => {d},\n", .{ d.short, d.bytes });
    try z.writeAll("        };\n    }\n\n    pub fn kind(self: DType) DTypeKind {\n        return switch (self) {\n");
    for (table.dtypes) |d| try z.print("            .{s} => .{s},\n", .{ d.short, d.kind });
    try z.writeAll("        };\n    }\n\n    pub fn name(self: DType) []const u8 {\n        return switch (self) {\n");
    for (table.dtypes) |d| try z.print("            .{s} => \"{s}\",\n", .{ d.short, d.name });
    try z.writeAll("        };\n    }\n};\n\n");

    try z.writeAll("pub const RedOp = enum(u32) {\n");
    for (table.redops) |r| try z.print("    {s} = {d},\n", .{ r.name, r.code });
    try z.writeAll("\n    /// Whether this reduce op is defined for dtypes of `k` (the table's `kinds`).\n");
    try z.writeAll("    pub fn supports(self: RedOp, k: DTypeKind) bool {\n        return switch (self) {\n");
    for (table.redops) |r| {
        try z.print("            .{s} => switch (k) {{ .float => {}, .int => {}, .bool => {} }},\n", .{
            r.name, supports(r, "float"), supports(r, "int"), supports(r, "bool"),
        });
    }
    try z.writeAll("        };\n    }\n\n    /// The bitwise op a reduce op means on bool (sum = or, prod = and, ...).\n");
    try z.writeAll("    pub fn onBool(self: RedOp) RedOp {\n        return switch (self) {\n");
    for (table.redops) |r| try z.print("            .{s} => .{s},\n", .{ r.name, r.bool_as orelse r.name });
    try z.writeAll("        };\n    }\n};\n\n");

    try writeCollectives(z, table.collectives);
    try std.fs.cwd().writeFile(.{ .sub_path = args[2], .data = zig_out.items });

    var cuh_out = std.ArrayList(u8).init(arena);
    const c = cuh_out.writer();
    try c.writeAll("// Generated by zig/tools/gen_ops.zig from src/ops/table.json. Do not edit.\n#pragma once\n\n");
    try c.writeAll("// X(short, c_type, code, kind)\n#define MR_FOR_EACH_DTYPE(X) \\\n");
    for (table.dtypes) |d| try c.print("    X({s}, {s}, {d}, {s}) \\\n", .{ d.short, d.c_type, d.code, d.kind });
    try c.writeAll("\n// X(redop, redop_code, short, c_type, dtype_code, kind): every supported pair\n#define MR_FOR_EACH_REDOP_DTYPE(X) \\\n");
    for (table.redops) |r| for (table.dtypes) |d| if (supports(r, d.kind)) {
        try c.print("    X({s}, {d}, {s}, {s}, {d}, {s}) \\\n", .{ r.name, r.code, d.short, d.c_type, d.code, d.kind });
    };
    try c.writeAll("\n");
    try std.fs.cwd().writeFile(.{ .sub_path = args[3], .data = cuh_out.items });
}
