//! The verbs device (split from verbs.zig): opening libibverbs, picking the device / port /
//! GID that MOONRING_IB_HCA / MOONRING_IB_GID_INDEX admit, and the one poller thread per device
//! that drains its channels' completion queues. The poller spins a while after the last
//! completion, then arms every CQ (ibv_req_notify_cq) and blocks on the device's completion
//! channel fd (poll with a timeout, so stop() is noticed); without a channel it sleeps instead.
const std = @import("std");
const sys = @import("../sys.zig");
const abi = @import("../verbs/abi.zig");
const lib = @import("../verbs/lib.zig");
const verbs = @import("verbs.zig");
const Channel = verbs.Channel;
const Config = verbs.Config;
const Reason = verbs.Reason;
const OpenError = verbs.OpenError;
const RegCache = verbs.RegCache;
const buffers = verbs.buffers;
const channels_max = verbs.channels_max;
const verbs_gpu = @import("verbs_gpu.zig");

const poller_idle_sleep_ns_min: u64 = 10 * std.time.ns_per_us;
const poller_idle_sleep_ns_max: u64 = 1 * std.time.ns_per_ms;
/// Idle polls of every CQ before the poller blocks (a completion soon after another is
/// picked up without a wake-up's latency).
const poller_spin_polls = 2000;
/// Longest block on the completion channel: stop() is noticed within it.
const poller_block_ms_max: i32 = 100;
/// Events taken per wake-up, at most: one per CQ waits at a time.
const events_per_wake_max = channels_max;

pub const Device = struct {
    api: lib.Api,
    context: *abi.Context,
    pd: *abi.Pd,
    port: u8,
    gid_index: u8,
    gid: abi.Gid,
    lid: u16,
    link_layer: u8,
    mtu: u32,
    name_len: usize,
    name_buf: [64]u8,
    config: Config,
    mu: std.Thread.Mutex = .{},
    /// channels[0..channel_count] are attached (dense: the poller walks only those).
    channels: [channels_max]*Channel = undefined,
    channel_count: u32 = 0,
    stop: std.atomic.Value(bool) = .init(false),
    poller: ?std.Thread = null,
    /// Every channel's CQ reports here (non-blocking fd); null: the poller sleeps when idle.
    comp_channel: ?*abi.CompChannel = null,
    cache: RegCache = .{},
    /// Bytes this device's queue pairs were asked to move (RDMA writes and sends posted,
    /// RDMA reads posted: GET /cluster's per-NIC counters).
    bytes: std.atomic.Value(u64) = .init(0),
    /// Device (GPU) memory registrations (verbs_gpu.zig).
    gpu_cache: verbs_gpu.Cache = .{},

    pub fn attach(dev: *Device, c: *Channel) bool {
        return attachImpl(dev, c);
    }

    pub fn detach(dev: *Device, c: *Channel) void {
        detachImpl(dev, c);
    }

    pub fn name(self: *const Device) []const u8 {
        return self.name_buf[0..self.name_len];
    }

    /// Opens libibverbs, picks a device / port / GID, allocates the PD and starts the poller.
    pub fn open(config: Config, why: *Reason) OpenError!*Device {
        var path_buf: [512]u8 = undefined;
        const path = lib.libraryPath(&path_buf);
        var load_why: [256]u8 = undefined;
        const api = lib.load(path, &load_why) catch {
            why.set("{s}", .{lib.whyText(&load_why)});
            return error.NoLibrary;
        };
        const dev = try std.heap.c_allocator.create(Device);
        errdefer std.heap.c_allocator.destroy(dev);
        dev.* = .{ .api = api, .context = undefined, .pd = undefined, .port = 0, .gid_index = 0, .gid = undefined, .lid = 0, .link_layer = 0, .mtu = 0, .name_len = 0, .name_buf = undefined, .config = config };
        try dev.pick(path, why);
        errdefer _ = dev.api.close_device(dev.context);
        dev.pd = dev.api.alloc_pd(dev.context) orelse {
            why.set("{s}: ibv_alloc_pd failed", .{dev.name()});
            return error.NoDevice;
        };
        dev.comp_channel = openCompChannel(&dev.api, dev.context);
        dev.poller = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, pollLoop, .{dev}) catch {
            if (dev.comp_channel) |ch| _ = dev.api.destroy_comp_channel(ch);
            _ = dev.api.dealloc_pd(dev.pd);
            why.set("could not start the verbs poller thread", .{});
            return error.OutOfMemory;
        };
        buffers.addDevice(dev);
        return dev;
    }

    pub fn close(dev: *Device) void {
        dev.stop.store(true, .release);
        if (dev.poller) |t| t.join();
        dev.mu.lock();
        std.debug.assert(dev.channel_count == 0);
        dev.mu.unlock();
        buffers.removeDevice(dev);
        dev.cache.clear(&dev.api);
        dev.gpu_cache.clear(&dev.api);
        if (dev.comp_channel) |ch| _ = dev.api.destroy_comp_channel(ch);
        _ = dev.api.dealloc_pd(dev.pd);
        _ = dev.api.close_device(dev.context);
        std.heap.c_allocator.destroy(dev);
    }

    /// The first device and active port that MOONRING_IB_HCA admits, and its GID.
    fn pick(dev: *Device, path: []const u8, why: *Reason) OpenError!void {
        var count: c_int = 0;
        const list = dev.api.get_device_list(&count) orelse {
            why.set("{s}: no RDMA devices (ibv_get_device_list failed)", .{path});
            return error.NoDevice;
        };
        defer dev.api.free_device_list(list);
        if (count <= 0) {
            why.set("{s}: no RDMA devices", .{path});
            return error.NoDevice;
        }
        var i: usize = 0;
        var skip = dev.config.device_skip;
        while (i < @as(usize, @intCast(count))) : (i += 1) {
            const device = list[i] orelse continue;
            const dev_name = std.mem.span(dev.api.get_device_name(device) orelse continue);
            const context = dev.api.open_device(device) orelse continue;
            if (dev.pickPort(context, dev_name)) {
                if (skip > 0) {
                    // An earlier rail has this one (striping: one Device per NIC).
                    skip -= 1;
                    _ = dev.api.close_device(context);
                    continue;
                }
                dev.context = context;
                const n = @min(dev_name.len, dev.name_buf.len);
                @memcpy(dev.name_buf[0..n], dev_name[0..n]);
                dev.name_len = n;
                return;
            }
            _ = dev.api.close_device(context);
        }
        if (dev.config.device_skip > 0) {
            why.set("{s}: no more than {d} active device(s)", .{ path, dev.config.device_skip });
        } else {
            why.set("{s}: no active port on {d} device(s) matching MOONRING_IB_HCA='{s}'", .{ path, count, dev.config.hca });
        }
        return error.NoDevice;
    }

    fn pickPort(dev: *Device, context: *abi.Context, dev_name: []const u8) bool {
        var attr: abi.DeviceAttr = .{};
        if (dev.api.query_device(context, &attr) != 0) return false;
        var port: u8 = 1;
        while (port <= attr.phys_port_cnt) : (port += 1) {
            if (!hcaAdmits(dev.config.hca, dev_name, port)) continue;
            var pa: abi.PortAttr = .{};
            if (dev.api.query_port(context, port, &pa) != 0 or pa.state != abi.port_active) continue;
            const gid_index = pickGid(&dev.api, context, port, pa, dev.config.gid_index) orelse continue;
            var gid: abi.Gid = undefined;
            if (dev.api.query_gid(context, port, gid_index, &gid) != 0) continue;
            dev.port = port;
            dev.gid_index = gid_index;
            dev.gid = gid;
            dev.lid = pa.lid;
            dev.link_layer = pa.link_layer;
            dev.mtu = pa.active_mtu;
            return true;
        }
        return false;
    }
};

/// NCCL_IB_HCA syntax: comma-separated `name[:port]` entries; a leading '^' excludes them, a
/// leading '=' matches names exactly (else by prefix). Empty admits everything.
pub fn hcaAdmits(spec_in: []const u8, dev_name: []const u8, port: u8) bool {
    if (spec_in.len == 0) return true;
    var spec = spec_in;
    const exclude = spec[0] == '^';
    if (exclude) spec = spec[1..];
    const exact = spec.len > 0 and spec[0] == '=';
    if (exact) spec = spec[1..];
    var it = std.mem.tokenizeScalar(u8, spec, ',');
    var matched = false;
    while (it.next()) |entry| {
        var parts = std.mem.splitScalar(u8, entry, ':');
        const want_name = parts.first();
        const want_port: ?u8 = if (parts.next()) |p| std.fmt.parseInt(u8, p, 10) catch null else null;
        const name_ok = if (exact) std.mem.eql(u8, dev_name, want_name) else std.mem.startsWith(u8, dev_name, want_name);
        if (name_ok and (want_port == null or want_port.? == port)) matched = true;
    }
    return matched != exclude;
}

/// The GID index to use: the one configured, else (Ethernet / RoCE) the first IPv4-mapped GID
/// that sysfs calls "RoCE v2" (or any IPv4-mapped one where sysfs says nothing), else 0 (IB).
fn pickGid(api: *const lib.Api, context: *abi.Context, port: u8, pa: abi.PortAttr, configured: ?u8) ?u8 {
    if (configured) |index| return if (index < pa.gid_tbl_len) index else null;
    if (pa.link_layer != abi.link_layer_ethernet) return 0;
    var fallback: ?u8 = null;
    var index: u8 = 0;
    while (index < pa.gid_tbl_len and index < 255) : (index += 1) {
        var gid: abi.Gid = undefined;
        if (api.query_gid(context, port, index, &gid) != 0) continue;
        if (abi.gidIpv4(gid) == null) continue;
        switch (gidType(context, port, index)) {
            .roce_v2 => return index,
            .unknown => if (fallback == null) {
                fallback = index;
            },
            .other => {},
        }
    }
    return fallback;
}

const GidType = enum { roce_v2, other, unknown };

/// /sys/class/infiniband/<dev>/ports/<port>/gid_attrs/types/<index> (absent for the test provider).
fn gidType(context: *abi.Context, port: u8, index: u8) GidType {
    const dev_name = std.mem.sliceTo(&context.device.name, 0);
    var path_buf: [256]u8 = undefined;
    const path = std.fmt.bufPrint(&path_buf, "/sys/class/infiniband/{s}/ports/{d}/gid_attrs/types/{d}", .{ dev_name, port, index }) catch return .unknown;
    var file = std.fs.openFileAbsolute(path, .{}) catch return .unknown;
    defer file.close();
    var text: [32]u8 = undefined;
    const n = file.read(&text) catch return .unknown;
    return if (std.mem.indexOf(u8, text[0..n], "v2") != null) .roce_v2 else .other;
}

/// The device's completion channel with a non-blocking fd, or null (the poller then sleeps).
fn openCompChannel(api: *const lib.Api, context: *abi.Context) ?*abi.CompChannel {
    const ch = api.create_comp_channel(context) orelse return null;
    if (sys.setNonBlocking(ch.fd)) return ch;
    _ = api.destroy_comp_channel(ch);
    return null;
}

fn pollLoop(dev: *Device) void {
    var idle_polls: u32 = 0;
    var sleep_ns: u64 = poller_idle_sleep_ns_min;
    while (!dev.stop.load(.acquire)) {
        if (drainAll(dev)) {
            idle_polls = 0;
            sleep_ns = poller_idle_sleep_ns_min;
            continue;
        }
        idle_polls += 1;
        if (idle_polls < poller_spin_polls) {
            std.atomic.spinLoopHint();
            continue;
        }
        idle_polls = 0;
        if (dev.comp_channel) |ch| {
            blockOnChannel(dev, ch);
        } else {
            std.Thread.sleep(sleep_ns);
            sleep_ns = @min(sleep_ns * 2, poller_idle_sleep_ns_max);
        }
    }
}

/// One poll of every attached channel's CQ. True when one had completions.
fn drainAll(dev: *Device) bool {
    var busy = false;
    dev.mu.lock();
    defer dev.mu.unlock();
    for (dev.channels[0..dev.channel_count]) |c| busy = c.drain() or busy;
    return busy;
}

/// Arms every CQ, looks once more (a completion that landed before its CQ was armed raises
/// no event), then sleeps on the channel's fd until an event or poller_block_ms_max.
fn blockOnChannel(dev: *Device, ch: *abi.CompChannel) void {
    dev.mu.lock();
    for (dev.channels[0..dev.channel_count]) |c| _ = dev.api.reqNotifyCq(c.cq, false);
    dev.mu.unlock();
    if (drainAll(dev)) return;
    _ = sys.pollFd(ch.fd, std.posix.POLL.IN, poller_block_ms_max) catch {};
    takeEvents(dev, ch);
}

/// Takes and acks every waiting event, under dev.mu: a channel's CQ is destroyed under it too
/// (Channel.destroy), so no event of a CQ is taken without its ack before the CQ goes.
fn takeEvents(dev: *Device, ch: *abi.CompChannel) void {
    dev.mu.lock();
    defer dev.mu.unlock();
    var taken: u32 = 0;
    while (taken < events_per_wake_max) : (taken += 1) {
        var cq: ?*abi.Cq = null;
        var cq_context: ?*anyopaque = null;
        if (dev.api.get_cq_event(ch, &cq, &cq_context) != 0) return;
        dev.api.ack_cq_events(cq.?, 1);
    }
}

fn attachImpl(dev: *Device, c: *Channel) bool {
    dev.mu.lock();
    defer dev.mu.unlock();
    std.debug.assert(dev.channel_count <= channels_max);
    if (dev.channel_count == channels_max) return false;
    dev.channels[dev.channel_count] = c;
    dev.channel_count += 1;
    // Armed at once: a poller blocked on the channel wakes for this CQ's first completion.
    if (dev.comp_channel != null) _ = dev.api.reqNotifyCq(c.cq, false);
    return true;
}

/// Destroys a detached channel's CQ under dev.mu (see takeEvents).
pub fn destroyCq(dev: *Device, cq: *abi.Cq) void {
    dev.mu.lock();
    defer dev.mu.unlock();
    _ = dev.api.destroy_cq(cq);
}

fn detachImpl(dev: *Device, c: *Channel) void {
    dev.mu.lock();
    defer dev.mu.unlock();
    for (dev.channels[0..dev.channel_count], 0..) |attached, i| {
        if (attached != c) continue;
        dev.channel_count -= 1;
        dev.channels[i] = dev.channels[dev.channel_count];
        return;
    }
}
