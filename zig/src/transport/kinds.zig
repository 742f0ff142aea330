//! The registry of data-plane link kinds (link_kind.zig describes the table). Adding a kind:
//! one file exporting `pub const ops: link_kind.Ops`, and one line here. Order is only the
//! tie-break between kinds of equal preference; tcp, the base kind, comes first.
const std = @import("std");
const link_kind = @import("link_kind.zig");
const wire = @import("wire.zig");

pub const all = [_]*const link_kind.Ops{
    &@import("kind_tcp.zig").ops,
    &@import("kind_shm.zig").ops,
    &@import("kind_verbs.zig").ops,
};

/// The index in `all` of the base kind, which every rank starts and accepts.
pub const base_index = 0;

/// $MOONRING_TRANSPORT's values: auto, or the name of one kind.
pub const Mode = blk: {
    var fields: [all.len + 1]std.builtin.Type.EnumField = undefined;
    fields[0] = .{ .name = "auto", .value = 0 };
    for (all, 1..) |kind, i| fields[i] = .{ .name = kind.name, .value = i };
    break :blk @Type(.{ .@"enum" = .{ .tag_type = u8, .fields = &fields, .decls = &.{}, .is_exhaustive = true } });
};

/// The kind's name when `mode` forces one, else null.
pub fn forcedName(mode: Mode) ?[]const u8 {
    if (mode == .auto) return null;
    return all[@intFromEnum(mode) - 1].name;
}

/// The index in `all` of the kind with this wire id, or null.
pub fn indexOfId(id: u16) ?usize {
    for (all, 0..) |kind, i| if (kind.id == id) return i;
    return null;
}

comptime {
    std.debug.assert(all[base_index].id == @intFromEnum(wire.LinkKind.tcp));
    for (all, 0..) |a, i| for (all[i + 1 ..]) |b| {
        std.debug.assert(a.id != b.id);
        std.debug.assert(!std.mem.eql(u8, a.name, b.name));
    };
}
