//! The header is the one definition of the C ABI: this file @cImport()s include/moonring.h and
//! asserts at compile time that every function it declares is exported (by root.zig or
//! cuda/exports.zig) with exactly the header's function type, and that root.zig exports no
//! mr_* function the header lacks. root.zig writes its signatures with these `c.` types.
const std = @import("std");

pub const c = @cImport({
    @cInclude("moonring.h");
});

const root = @import("root.zig");
const cuda_exports = @import("cuda/exports.zig");

fn isFunction(comptime T: type) bool {
    return @typeInfo(T) == .@"fn";
}

comptime {
    @setEvalBranchQuota(200_000);
    var checked = 0;
    for (@typeInfo(c).@"struct".decls) |decl| {
        if (!std.mem.startsWith(u8, decl.name, "mr_")) continue;
        const Header = @TypeOf(@field(c, decl.name));
        if (!isFunction(Header)) continue;
        const Export = if (@hasDecl(root, decl.name))
            @TypeOf(@field(root, decl.name))
        else if (@hasDecl(cuda_exports, decl.name))
            @TypeOf(@field(cuda_exports, decl.name))
        else
            @compileError("moonring.h declares " ++ decl.name ++ " but no pub export defines it");
        if (Export != Header) {
            @compileError("export " ++ decl.name ++ " has type " ++ @typeName(Export) ++
                ", moonring.h declares " ++ @typeName(Header));
        }
        checked += 1;
    }
    if (checked < 20) @compileError("abi_check: too few mr_* functions found in moonring.h");
    for (@typeInfo(root).@"struct".decls) |decl| {
        if (!std.mem.startsWith(u8, decl.name, "mr_")) continue;
        if (!isFunction(@TypeOf(@field(root, decl.name)))) continue;
        if (!@hasDecl(c, decl.name)) @compileError("root.zig exports " ++ decl.name ++ ", which moonring.h does not declare");
    }
}
