//! libibverbs opened at run time (never linked): dlopen("libibverbs.so.1"), or the library
//! that $MOONRING_VERBS_LIB names (the test provider, libmoonring_fakeverbs.so). The core never
//! otherwise knows which one it has. The data-path calls (post send / recv, poll) go through
//! the context's ops table, as rdma-core's inline functions in verbs.h do.
const std = @import("std");
const abi = @import("abi.zig");

pub const soname = "libibverbs.so.1";
/// The one setting that picks the verbs library (a path; default: the system's libibverbs).
pub const env_library = "MOONRING_VERBS_LIB";

pub const Api = struct {
    get_device_list: *const fn (num: ?*c_int) callconv(.c) ?[*]?*abi.Device,
    free_device_list: *const fn (list: ?[*]?*abi.Device) callconv(.c) void,
    get_device_name: *const fn (device: *abi.Device) callconv(.c) ?[*:0]const u8,
    open_device: *const fn (device: *abi.Device) callconv(.c) ?*abi.Context,
    close_device: *const fn (context: *abi.Context) callconv(.c) c_int,
    query_device: *const fn (context: *abi.Context, attr: *abi.DeviceAttr) callconv(.c) c_int,
    query_port: *const fn (context: *abi.Context, port: u8, attr: *abi.PortAttr) callconv(.c) c_int,
    query_gid: *const fn (context: *abi.Context, port: u8, index: c_int, gid: *abi.Gid) callconv(.c) c_int,
    alloc_pd: *const fn (context: *abi.Context) callconv(.c) ?*abi.Pd,
    dealloc_pd: *const fn (pd: *abi.Pd) callconv(.c) c_int,
    reg_mr: *const fn (pd: *abi.Pd, addr: ?*anyopaque, length: usize, access: c_int) callconv(.c) ?*abi.Mr,
    /// rdma-core >= 34; GPU memory by dma-buf.
    reg_dmabuf_mr: ?*const fn (pd: *abi.Pd, offset: u64, length: usize, iova: u64, fd: c_int, access: c_int) callconv(.c) ?*abi.Mr,
    dereg_mr: *const fn (mr: *abi.Mr) callconv(.c) c_int,
    create_cq: *const fn (context: *abi.Context, cqe: c_int, cq_context: ?*anyopaque, channel: ?*abi.CompChannel, comp_vector: c_int) callconv(.c) ?*abi.Cq,
    destroy_cq: *const fn (cq: *abi.Cq) callconv(.c) c_int,
    create_qp: *const fn (pd: *abi.Pd, init: *abi.QpInitAttr) callconv(.c) ?*abi.Qp,
    modify_qp: *const fn (qp: *abi.Qp, attr: *abi.QpAttr, mask: c_int) callconv(.c) c_int,
    query_qp: *const fn (qp: *abi.Qp, attr: *abi.QpAttr, mask: c_int, init: *abi.QpInitAttr) callconv(.c) c_int,
    destroy_qp: *const fn (qp: *abi.Qp) callconv(.c) c_int,
    wc_status_str: *const fn (status: abi.WcStatus) callconv(.c) [*:0]const u8,
    /// Completion channels: the CQ poller blocks on one instead of sleeping when idle.
    create_comp_channel: *const fn (context: *abi.Context) callconv(.c) ?*abi.CompChannel,
    destroy_comp_channel: *const fn (channel: *abi.CompChannel) callconv(.c) c_int,
    get_cq_event: *const fn (channel: *abi.CompChannel, cq: *?*abi.Cq, cq_context: *?*anyopaque) callconv(.c) c_int,
    ack_cq_events: *const fn (cq: *abi.Cq, nevents: c_uint) callconv(.c) void,

    pub fn postSend(_: *const Api, qp: *abi.Qp, wr: *abi.SendWr) c_int {
        var bad: ?*abi.SendWr = null;
        return qp.context.ops.post_send.?(qp, wr, &bad);
    }

    pub fn postRecv(_: *const Api, qp: *abi.Qp, wr: *abi.RecvWr) c_int {
        var bad: ?*abi.RecvWr = null;
        return qp.context.ops.post_recv.?(qp, wr, &bad);
    }

    pub fn pollCq(_: *const Api, cq: *abi.Cq, wc: []abi.Wc) c_int {
        return cq.context.ops.poll_cq.?(cq, @intCast(wc.len), wc.ptr);
    }

    /// ibv_req_notify_cq (an inline of verbs.h): the next completion raises an event on the
    /// CQ's channel (with `solicited_only`: only a solicited receive or an error does).
    pub fn reqNotifyCq(_: *const Api, cq: *abi.Cq, solicited_only: bool) c_int {
        return cq.context.ops.req_notify_cq.?(cq, @intFromBool(solicited_only));
    }

    pub fn statusText(api: *const Api, status: abi.WcStatus) []const u8 {
        return std.mem.span(api.wc_status_str(status));
    }
};

pub const LoadError = error{ LibraryMissing, SymbolMissing };

pub const Loaded = struct {
    api: Api,
    path: []const u8,
};

/// Which library to open: $MOONRING_VERBS_LIB, else the system's libibverbs.so.1.
pub fn libraryPath(buf: *[512]u8) [:0]const u8 {
    const value = std.c.getenv(env_library) orelse return soname;
    return std.fmt.bufPrintZ(buf, "{s}", .{std.mem.sliceTo(value, 0)}) catch soname;
}

/// dlopen + dlsym of every entry point; `why` gets the reason on failure.
pub fn load(path: [:0]const u8, why: *[256]u8) LoadError!Api {
    const handle = std.c.dlopen(path.ptr, .{ .NOW = true }) orelse {
        const reason: []const u8 = if (std.c.dlerror()) |e| std.mem.span(e) else "dlopen failed";
        _ = std.fmt.bufPrint(why, "cannot load {s}: {s}\x00", .{ path, reason }) catch {};
        return error.LibraryMissing;
    };
    // Never dlclose: contexts and function pointers live as long as the process.
    var api: Api = undefined;
    inline for (std.meta.fields(Api)) |field| {
        const symbol = std.c.dlsym(handle, "ibv_" ++ field.name);
        if (@typeInfo(field.type) == .optional) {
            @field(api, field.name) = if (symbol) |s| @ptrCast(@alignCast(s)) else null;
        } else {
            const s = symbol orelse {
                _ = std.fmt.bufPrint(why, "{s} lacks ibv_{s}\x00", .{ path, field.name }) catch {};
                return error.SymbolMissing;
            };
            @field(api, field.name) = @ptrCast(@alignCast(s));
        }
    }
    return api;
}

pub fn whyText(why: *const [256]u8) []const u8 {
    return std.mem.sliceTo(why, 0);
}

/// Tests of the core (zig build test) get the test provider's path here rather than in
/// $MOONRING_VERBS_LIB, so that only the tests meant for verbs see a verbs device: they call
/// `useTestProvider` (sets $MOONRING_VERBS_LIB for the process) and `dropTestProvider` after.
pub const env_test_library = "MOONRING_TEST_VERBS_LIB";
extern "c" fn setenv(name: [*:0]const u8, value: [*:0]const u8, overwrite: c_int) c_int;
extern "c" fn unsetenv(name: [*:0]const u8) c_int;

pub fn useTestProvider() bool {
    const path = std.c.getenv(env_test_library) orelse return false;
    return setenv(env_library, path, 1) == 0;
}

pub fn dropTestProvider() void {
    _ = unsetenv(env_library);
}
