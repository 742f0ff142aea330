//! The verbs device (split from verbs.zig): opening libibverbs, picking the device / port /
//! GID that MOONRING_IB_HCA / MOONRING_IB_GID_INDEX admit, and the one poller thread per device
//! that drains its channels' completion queues.
const std = @import("std");
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

const poller_idle_sleep_ns_max: u64 = 1 * std.time.ns_per_ms;
const poller_spin_polls = 2000;

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
    channels: [channels_max]?*Channel = [_]?*Channel{null} ** channels_max,
    stop: std.atomic.Value(bool) = .init(false),
    poller: ?std.Thread = null,
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
        dev.poller = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, pollLoop, .{dev}) catch {
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
        for (dev.channels) |c| std.debug.assert(c == null);
        dev.mu.unlock();
        buffers.removeDevice(dev);
        dev.cache.clear(&dev.api);
        dev.gpu_cache.clear(&dev.api);
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

fn pollLoop(dev: *Device) void {
    var idle_polls: u64 = 0;
    var sleep_ns: u64 = 10 * std.time.ns_per_us;
    while (!dev.stop.load(.acquire)) {
        var busy = false;
        dev.mu.lock();
        for (dev.channels) |maybe| {
            if (maybe) |c| busy = c.drain() or busy;
        }
        dev.mu.unlock();
        if (busy) {
            idle_polls = 0;
            sleep_ns = 10 * std.time.ns_per_us;
            continue;
        }
        idle_polls += 1;
        if (idle_polls < poller_spin_polls) {
            std.atomic.spinLoopHint();
            continue;
        }
        std.Thread.sleep(sleep_ns);
        sleep_ns = @min(sleep_ns * 2, poller_idle_sleep_ns_max);
    }
}

fn attachImpl(dev: *Device, c: *Channel) bool {
    dev.mu.lock();
    defer dev.mu.unlock();
    for (&dev.channels) |*slot| {
        if (slot.* == null) {
            slot.* = c;
            return true;
        }
    }
    return false;
}

fn detachImpl(dev: *Device, c: *Channel) void {
    dev.mu.lock();
    defer dev.mu.unlock();
    for (&dev.channels) |*slot| {
        if (slot.* == c) slot.* = null;
    }
}
