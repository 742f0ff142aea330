//! libmoonring_fakeverbs.so: a userspace verbs "device" for tests on machines without an RDMA
//! NIC. It exports the libibverbs entry points moonring calls and fills `ibv_context.ops` the
//! way rdma-core's inline ibv_post_send / ibv_post_recv / ibv_poll_cq expect, so code written
//! against libibverbs runs on it unchanged (MOONRING_VERBS_LIB=<path of this library>).
//!
//! The wire: every RC queue pair owns a TCP listener whose port is its QP number; the GID table
//! is the host's IPv4 addresses as RoCE v2 GIDs (::ffff:a.b.c.d), so a QP is addressed by
//! (dgid, dest_qp_num) exactly like RoCE, and QPs in different network namespaces reach each
//! other over the veth addresses like hosts. At RTR a QP dials its peer's listener for its own
//! requests and accepts the peer's dial for the peer's requests; responses (ACK / NAK / read
//! data) flow back on the same connection. TCP gives in-order reliable delivery; the device
//! adds what hardware adds on top: the QP state machine with attribute-mask checks,
//! lkey / rkey / bounds / access checks failing the work request with the completion status a
//! NIC reports, receive-not-ready (RNR NAK, retried rnr_retry times, 7 = forever), inline size
//! limits, send-queue and CQ limits (a CQ that overruns goes to error), and retry-exceeded
//! when the peer is gone (its connection closed) or silent past timeout x retry_cnt.
//!
//! One progress thread per opened device moves bytes (non-blocking sockets, poll()); posting
//! never blocks. Everything is guarded by one mutex per device context.
const std = @import("std");
const abi = @import("abi.zig");
const fake_gpu = @import("fake_gpu.zig");
const posix = std.posix;
const gpa = std.heap.c_allocator;

/// Devices ("NICs") the provider shows: MOONRING_FAKEVERBS_DEVICES (default 1), named
/// moonring_fake0, moonring_fake1, ...; each its own contexts, port and GUID. They share the
/// namespace's GID table (one host's addresses): QPs are told apart by number, as on RoCE.
const devices_max = 4;
const gids_max = 16;
const qps_max = 1024;
const sge_max = 16;
const inline_max = 256;
const qp_wr_max = 4096;
const cqe_max = 1 << 16;
const progress_poll_ms = 5;
/// Bytes read from one socket per progress pass (fairness between QPs).
const read_pass_bytes_max = 4 << 20;
const hello_magic: u32 = 0x4d52_5645; // "MRVE"

/// Request kinds on the wire.
const Kind = enum(u8) { send = 1, write = 2, read = 3 };
/// Response statuses on the wire.
const Response = enum(u8) { ack = 0, rnr = 1, rem_access = 2, rem_inv_req = 3, rem_op = 4, rnr_wait = 5 };

const RequestHeader = extern struct {
    kind: Kind,
    with_imm: u8,
    rnr_retry: u8,
    /// The solicited-event bit (IBV_SEND_SOLICITED): a receive completion it causes wakes a CQ
    /// armed for solicited completions only.
    solicited: u8,
    imm: u32,
    length: u32,
    rkey: u32,
    remote_addr: u64,
};
const ResponseHeader = extern struct { status: Response, pad: [3]u8 = .{ 0, 0, 0 }, length: u32 };
const Hello = extern struct { magic: u32, qpn: u32, gid: [16]u8 };
comptime {
    std.debug.assert(@sizeOf(RequestHeader) == 24);
    std.debug.assert(@sizeOf(ResponseHeader) == 8);
    std.debug.assert(@sizeOf(Hello) == 24);
}

// ---- memory access ---------------------------------------------------------------------------

/// Copies into / out of application memory the way a NIC does, without taking the process
/// down when the application unmapped a still-registered region meanwhile (a NIC would reach
/// the pinned pages; process_vm_readv / writev on ourselves fail with EFAULT instead of a
/// SIGSEGV). False: the memory is gone. Plain memcpy where those calls are not permitted.
fn copyOut(dst: []u8, src_addr: u64) bool {
    if (dst.len == 0) return true;
    const local = [_]posix.iovec{.{ .base = dst.ptr, .len = dst.len }};
    const remote = [_]posix.iovec_const{.{ .base = @ptrFromInt(src_addr), .len = dst.len }};
    return vmCopy(std.os.linux.process_vm_readv(std.os.linux.getpid(), &local, &remote, 0), dst.len, struct {
        fn plain(d: []u8, a: u64) void {
            const src: [*]const u8 = @ptrFromInt(a);
            @memcpy(d, src[0..d.len]);
        }
    }.plain, dst, src_addr);
}

fn copyIn(dst_addr: u64, src: []const u8) bool {
    if (src.len == 0) return true;
    const local = [_]posix.iovec_const{.{ .base = src.ptr, .len = src.len }};
    const remote = [_]posix.iovec_const{.{ .base = @ptrFromInt(dst_addr), .len = src.len }};
    const rc = std.os.linux.process_vm_writev(std.os.linux.getpid(), &local, &remote, 0);
    switch (std.os.linux.E.init(rc)) {
        .SUCCESS => return rc == src.len,
        .PERM, .NOSYS => {
            const dst: [*]u8 = @ptrFromInt(dst_addr);
            @memcpy(dst[0..src.len], src);
            return true;
        },
        else => return false,
    }
}

fn vmCopy(rc: usize, len: usize, plain: *const fn ([]u8, u64) void, dst: []u8, src_addr: u64) bool {
    switch (std.os.linux.E.init(rc)) {
        .SUCCESS => return rc == len,
        .PERM, .NOSYS => {
            plain(dst, src_addr);
            return true;
        },
        else => return false,
    }
}

// ---- objects ---------------------------------------------------------------------------------

const Ctx = struct {
    base: abi.Context,
    mu: std.Thread.Mutex = .{},
    qps: std.ArrayListUnmanaged(*Qp) = .{},
    mrs: std.ArrayListUnmanaged(*Mr) = .{},
    pds: u32 = 0,
    cqs: u32 = 0,
    channels: u32 = 0,
    key_serial: u32 = 0,
    qp_serial: u64 = 0,
    wake: [2]posix.fd_t,
    stop: std.atomic.Value(bool) = .init(false),
    thread: ?std.Thread = null,

    fn of(context: *abi.Context) *Ctx {
        return @fieldParentPtr("base", context);
    }

    fn kick(ctx: *Ctx) void {
        _ = posix.write(ctx.wake[1], "x") catch {};
    }

    fn findMr(ctx: *Ctx, key: u32, remote: bool) ?*Mr {
        for (ctx.mrs.items) |mr| {
            if ((if (remote) mr.base.rkey else mr.base.lkey) == key) return mr;
        }
        return null;
    }
};

const Pd = struct { base: abi.Pd };
/// `gpu`: device memory (fake_gpu.zig), reached through the CUDA driver API.
const Mr = struct { base: abi.Mr, access: c_int, gpu: ?fake_gpu.Region = null };

/// Bytes into / out of a region's memory: device regions through CUDA, host ones as a NIC.
fn mrCopyIn(mr: ?*const Mr, dst_addr: u64, src: []const u8) bool {
    if (mr) |m| if (m.gpu) |region| return fake_gpu.copyIn(region, dst_addr, src);
    return copyIn(dst_addr, src);
}

fn mrCopyOut(mr: ?*const Mr, dst: []u8, src_addr: u64) bool {
    if (mr) |m| if (m.gpu) |region| return fake_gpu.copyOut(region, dst, src_addr);
    return copyOut(dst, src_addr);
}

const Cq = struct {
    base: abi.Cq,
    entries: []abi.Wc,
    head: usize = 0,
    count: usize = 0,
    /// More completions arrived than the CQ holds: the CQ is in error (like hardware).
    overrun: bool = false,
    users: u32 = 0,
    /// ibv_req_notify_cq: which next completion raises an event on the channel (one-shot).
    arm: Arm = .none,
    /// An event of this CQ waits in its channel (events collapse: at most one waits).
    event_waiting: bool = false,
    /// Events taken by ibv_get_cq_event; ibv_destroy_cq needs them all acked
    /// (base.comp_events_completed), as rdma-core's does.
    events_taken: u32 = 0,

    const Arm = enum { none, solicited, any };

    fn of(cq: *abi.Cq) *Cq {
        return @fieldParentPtr("base", cq);
    }

    fn push(cq: *Cq, wc: abi.Wc) void {
        cq.pushCompletion(wc, false);
    }

    /// A completion; `solicited`: a receive of a request that carried the solicited-event bit.
    fn pushCompletion(cq: *Cq, wc: abi.Wc, solicited: bool) void {
        if (cq.count == cq.entries.len) {
            cq.overrun = true;
            return;
        }
        cq.entries[(cq.head + cq.count) % cq.entries.len] = wc;
        cq.count += 1;
        // Solicited-only arming fires on solicited receives and on errors (IB spec 11.4.2.2).
        const fire = switch (cq.arm) {
            .none => false,
            .solicited => solicited or wc.status != .success,
            .any => true,
        };
        if (!fire) return;
        cq.arm = .none;
        Channel.of(cq.base.channel.?).post(cq);
    }
};

/// A completion channel. The application's fd is one end of a socket pair; one byte waits in
/// it while events do, so poll() on the fd says "an event waits" exactly like the kernel's.
const Channel = struct {
    base: abi.CompChannel,
    /// Our end: a byte written here makes base.fd readable.
    bell_fd: posix.fd_t,
    /// CQs with an event not taken yet, oldest first.
    waiting: std.ArrayListUnmanaged(*Cq) = .{},

    fn of(channel: *abi.CompChannel) *Channel {
        return @fieldParentPtr("base", channel);
    }

    /// Under ctx.mu: queues an event of `cq` (collapsed into one already waiting).
    fn post(ch: *Channel, cq: *Cq) void {
        if (cq.event_waiting) return;
        ch.waiting.append(gpa, cq) catch return; // lost like an event past a full queue
        cq.event_waiting = true;
        if (ch.waiting.items.len == 1) _ = posix.send(ch.bell_fd, "e", posix.MSG.DONTWAIT | posix.MSG.NOSIGNAL) catch {};
    }

    /// Under ctx.mu: the oldest waiting event's CQ, or null.
    fn take(ch: *Channel) ?*Cq {
        if (ch.waiting.items.len == 0) return null;
        const cq = ch.waiting.orderedRemove(0);
        cq.event_waiting = false;
        if (ch.waiting.items.len == 0) ch.silenceBell();
        return cq;
    }

    /// Under ctx.mu: a destroyed CQ's waiting event goes (the kernel drops unread events too).
    fn forget(ch: *Channel, cq: *Cq) void {
        for (ch.waiting.items, 0..) |w, i| {
            if (w != cq) continue;
            _ = ch.waiting.orderedRemove(i);
            cq.event_waiting = false;
            if (ch.waiting.items.len == 0) ch.silenceBell();
            return;
        }
    }

    fn silenceBell(ch: *Channel) void {
        var byte: [1]u8 = undefined;
        _ = posix.recv(ch.base.fd, &byte, posix.MSG.DONTWAIT) catch {};
    }
};

const SendEntry = struct {
    wr_id: u64,
    opcode: u32,
    signaled: bool,
    byte_len: u32,
    status: ?abi.WcStatus = null,
    /// read: where the response data lands.
    sges: [sge_max]abi.Sge = undefined,
    num_sge: u32 = 0,
};

const RecvEntry = struct {
    wr_id: u64,
    sges: [sge_max]abi.Sge,
    num_sge: u32,
};

fn Ring(comptime T: type) type {
    return struct {
        items: []T = &.{},
        head: usize = 0,
        len: usize = 0,

        fn init(self: *@This(), capacity: usize) !void {
            self.items = try gpa.alloc(T, @max(capacity, 1));
        }
        fn full(self: *const @This()) bool {
            return self.len == self.items.len;
        }
        fn push(self: *@This(), item: T) void {
            std.debug.assert(!self.full());
            self.items[(self.head + self.len) % self.items.len] = item;
            self.len += 1;
        }
        fn at(self: *@This(), i: usize) *T {
            std.debug.assert(i < self.len);
            return &self.items[(self.head + i) % self.items.len];
        }
        fn pop(self: *@This()) T {
            std.debug.assert(self.len > 0);
            const item = self.items[self.head];
            self.head = (self.head + 1) % self.items.len;
            self.len -= 1;
            return item;
        }
    };
}

const Buffer = std.ArrayListUnmanaged(u8);

const Qp = struct {
    base: abi.Qp,
    serial: u64,
    cap: abi.QpCap,
    sq_sig_all: bool,
    access: c_uint = 0,
    port: u8 = 0,
    dest_gid: abi.Gid = .{ .raw = [_]u8{0} ** 16 },
    dest_qpn: u32 = 0,
    timeout: u8 = 0,
    retry_cnt: u8 = 0,
    rnr_retry: u8 = 0,
    min_rnr_timer: u8 = 0,
    path_mtu: u32 = abi.mtu_1024,
    listener: posix.fd_t,
    /// Our requests go out here; responses to them come back.
    tx_fd: ?posix.fd_t = null,
    /// The peer's requests come in here; our responses go back.
    rx_fd: ?posix.fd_t = null,
    hello_seen: bool = false,
    sq: Ring(SendEntry) = .{},
    /// Entries of sq already written to the wire (the rest wait for an earlier local error).
    rq: Ring(RecvEntry) = .{},
    tx_out: Buffer = .{},
    tx_out_off: usize = 0,
    tx_in: Buffer = .{},
    rx_in: Buffer = .{},
    rx_out: Buffer = .{},
    rx_out_off: usize = 0,
    /// RNR: the head request waits for a receive; retries left and when to look again.
    rnr_parked: bool = false,
    rnr_left: u8 = 0,
    rnr_next_ns: u64 = 0,
    /// After a NAK the responder discards the rest of that request stream.
    rx_dropping: bool = false,
    /// The peer's connection closed or could not be made: requests fail retry-exceeded.
    peer_lost: bool = false,
    /// A request failed locally: later ones are flushed, not sent.
    sq_failed: bool = false,
    last_progress_ns: u64 = 0,

    fn of(qp: *abi.Qp) *Qp {
        return @fieldParentPtr("base", qp);
    }
    fn ctx(qp: *Qp) *Ctx {
        return Ctx.of(qp.base.context);
    }
    fn state(qp: *const Qp) abi.QpState {
        return qp.base.state;
    }
};

// ---- device ----------------------------------------------------------------------------------

var devices: [devices_max]abi.Device = [_]abi.Device{.{}} ** devices_max;
var device_list: [devices_max + 1]?*abi.Device = [_]?*abi.Device{null} ** (devices_max + 1);
var device_count: usize = 1;
/// MOONRING_FAKEVERBS_FAIL_DEVICE=<name>: that device's link is down (a pulled cable): every
/// request posted there completes with IBV_WC_RETRY_EXC_ERR (tests of striping's failure path).
var failing_device: ?usize = null;
var gid_table: [gids_max]abi.Gid = undefined;
var gid_count: usize = 0;
var device_once = std.once(initDevice);

fn initDevice() void {
    if (std.c.getenv("MOONRING_FAKEVERBS_DEVICES")) |v| {
        device_count = std.math.clamp(std.fmt.parseInt(usize, std.mem.span(v), 10) catch 1, 1, devices_max);
    }
    const failing: []const u8 = if (std.c.getenv("MOONRING_FAKEVERBS_FAIL_DEVICE")) |v| std.mem.span(v) else "";
    for (devices[0..device_count], 0..) |*d, i| {
        const name = std.fmt.bufPrintZ(&d.name, "moonring_fake{d}", .{i}) catch unreachable;
        _ = std.fmt.bufPrintZ(&d.dev_name, "uverbs{d}", .{i}) catch unreachable;
        device_list[i] = d;
        if (std.mem.eql(u8, name, failing)) failing_device = i;
    }
    loadGids();
}

const Ifaddrs = extern struct {
    next: ?*Ifaddrs,
    name: [*:0]const u8,
    flags: c_uint,
    addr: ?*posix.sockaddr,
    netmask: ?*posix.sockaddr,
    ifu: ?*posix.sockaddr,
    data: ?*anyopaque,
};
extern "c" fn getifaddrs(out: *?*Ifaddrs) c_int;
extern "c" fn freeifaddrs(list: ?*Ifaddrs) void;

/// The GID table: the IPv4 addresses of this network namespace, loopback last (RoCE v2 lists
/// one GID per address of the netdev).
fn loadGids() void {
    var list: ?*Ifaddrs = null;
    if (getifaddrs(&list) != 0) return;
    defer freeifaddrs(list);
    var loopback: ?[4]u8 = null;
    var it = list;
    while (it) |ifa| : (it = ifa.next) {
        const sa = ifa.addr orelse continue;
        if (sa.family != posix.AF.INET) continue;
        const in: *const posix.sockaddr.in = @ptrCast(@alignCast(sa));
        const ip: [4]u8 = @bitCast(in.addr);
        if (ip[0] == 127) {
            loopback = ip;
            continue;
        }
        if (gid_count < gids_max - 1) {
            gid_table[gid_count] = abi.gidFromIpv4(ip);
            gid_count += 1;
        }
    }
    if (loopback) |ip| {
        gid_table[gid_count] = abi.gidFromIpv4(ip);
        gid_count += 1;
    }
}

export fn ibv_get_device_list(num: ?*c_int) ?[*]?*abi.Device {
    device_once.call();
    if (num) |n| n.* = @intCast(device_count);
    return &device_list;
}

export fn ibv_free_device_list(list: ?[*]?*abi.Device) void {
    _ = list;
}

export fn ibv_get_device_name(device: *abi.Device) [*:0]const u8 {
    return @ptrCast(&device.name);
}

export fn ibv_get_device_guid(device: *abi.Device) u64 {
    return std.mem.nativeToBig(u64, 0x6d6f6f6e_00000001 + @as(u64, deviceIndex(device)));
}

fn deviceIndex(device: *const abi.Device) usize {
    const index = (@intFromPtr(device) - @intFromPtr(&devices[0])) / @sizeOf(abi.Device);
    std.debug.assert(index < device_count);
    return index;
}

export fn ibv_open_device(device: *abi.Device) ?*abi.Context {
    const ctx = gpa.create(Ctx) catch return null;
    const wake = posix.pipe2(.{ .NONBLOCK = true, .CLOEXEC = true }) catch {
        gpa.destroy(ctx);
        return null;
    };
    ctx.* = .{
        .base = .{
            .device = device,
            .ops = .{ .poll_cq = pollCq, .req_notify_cq = reqNotifyCq, .post_send = postSend, .post_recv = postRecv },
            .cmd_fd = -1,
            .async_fd = -1,
            .num_comp_vectors = 1,
            .mutex = .{},
            .abi_compat = null,
        },
        .wake = wake,
    };
    ctx.thread = std.Thread.spawn(.{}, progressLoop, .{ctx}) catch {
        posix.close(wake[0]);
        posix.close(wake[1]);
        gpa.destroy(ctx);
        return null;
    };
    return &ctx.base;
}

export fn ibv_close_device(context: *abi.Context) c_int {
    const ctx = Ctx.of(context);
    ctx.mu.lock();
    const busy = ctx.qps.items.len != 0 or ctx.mrs.items.len != 0 or ctx.pds != 0 or ctx.cqs != 0 or ctx.channels != 0;
    ctx.mu.unlock();
    if (busy) return @intFromEnum(posix.E.BUSY);
    ctx.stop.store(true, .release);
    ctx.kick();
    if (ctx.thread) |t| t.join();
    posix.close(ctx.wake[0]);
    posix.close(ctx.wake[1]);
    ctx.qps.deinit(gpa);
    ctx.mrs.deinit(gpa);
    gpa.destroy(ctx);
    return 0;
}

export fn ibv_query_device(context: *abi.Context, attr: *abi.DeviceAttr) c_int {
    attr.* = .{};
    @memcpy(attr.fw_ver[0..9], "moonring0");
    attr.node_guid = ibv_get_device_guid(context.device);
    attr.max_mr_size = 1 << 40;
    attr.page_size_cap = 4096;
    attr.vendor_id = 0x6d72;
    attr.max_qp = qps_max;
    attr.max_qp_wr = qp_wr_max;
    attr.max_sge = sge_max;
    attr.max_sge_rd = sge_max;
    attr.max_cq = 1024;
    attr.max_cqe = cqe_max;
    attr.max_mr = 1 << 16;
    attr.max_pd = 1024;
    attr.max_qp_rd_atom = 16;
    attr.max_qp_init_rd_atom = 16;
    attr.phys_port_cnt = 1;
    attr.max_pkeys = 1;
    return 0;
}

export fn ibv_query_port(context: *abi.Context, port_num: u8, attr: *abi.PortAttr) c_int {
    _ = context;
    device_once.call();
    if (port_num != 1) return @intFromEnum(posix.E.INVAL);
    attr.* = .{
        .state = abi.port_active,
        .max_mtu = abi.mtu_4096,
        .active_mtu = abi.mtu_4096,
        .gid_tbl_len = @intCast(gid_count),
        .max_msg_sz = 1 << 31,
        .pkey_tbl_len = 1,
        .active_width = 2, // 4x
        .active_speed = 32, // EDR-class
        .phys_state = 5, // LinkUp
        .link_layer = abi.link_layer_ethernet,
    };
    return 0;
}

export fn ibv_query_gid(context: *abi.Context, port_num: u8, index: c_int, gid: *abi.Gid) c_int {
    _ = context;
    device_once.call();
    if (port_num != 1 or index < 0 or index >= gid_count) return -1;
    gid.* = gid_table[@intCast(index)];
    return 0;
}

fn gidKnown(gid: abi.Gid) bool {
    for (gid_table[0..gid_count]) |g| if (std.mem.eql(u8, &g.raw, &gid.raw)) return true;
    return false;
}

export fn ibv_wc_status_str(status: abi.WcStatus) [*:0]const u8 {
    return switch (status) {
        .success => "success",
        .loc_len_err => "local length error",
        .loc_qp_op_err => "local QP operation error",
        .loc_prot_err => "local protection error",
        .wr_flush_err => "Work Request Flushed Error",
        .rem_inv_req_err => "remote invalid request error",
        .rem_access_err => "remote access error",
        .rem_op_err => "remote operation error",
        .retry_exc_err => "transport retry counter exceeded",
        .rnr_retry_exc_err => "RNR retry counter exceeded",
        else => "unknown",
    };
}

export fn ibv_fork_init() c_int {
    return 0;
}

// ---- protection domains and memory regions ---------------------------------------------------

export fn ibv_alloc_pd(context: *abi.Context) ?*abi.Pd {
    const ctx = Ctx.of(context);
    const pd = gpa.create(Pd) catch return null;
    ctx.mu.lock();
    defer ctx.mu.unlock();
    ctx.pds += 1;
    pd.* = .{ .base = .{ .context = context, .handle = ctx.pds } };
    return &pd.base;
}

export fn ibv_dealloc_pd(pd: *abi.Pd) c_int {
    const ctx = Ctx.of(pd.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    for (ctx.mrs.items) |mr| if (mr.base.pd == pd) return @intFromEnum(posix.E.BUSY);
    for (ctx.qps.items) |qp| if (qp.base.pd == pd) return @intFromEnum(posix.E.BUSY);
    ctx.pds -= 1;
    gpa.destroy(@as(*Pd, @fieldParentPtr("base", pd)));
    return 0;
}

fn setErrno(e: posix.E) void {
    std.c._errno().* = @intFromEnum(e);
}

export fn ibv_reg_mr(pd: *abi.Pd, addr: ?*anyopaque, length: usize, access: c_int) ?*abi.Mr {
    // Remote write / atomic access needs local write (IB spec 10.6.3.1; ibv_reg_mr(3)).
    const remote_needs_local = abi.access_remote_write | abi.access_remote_atomic;
    if (access & remote_needs_local != 0 and access & abi.access_local_write == 0) {
        setErrno(.INVAL);
        return null;
    }
    if (length == 0 or addr == null) {
        setErrno(.INVAL);
        return null;
    }
    // nvidia-peermem lets ibv_reg_mr pin device memory; emulated where the setting says so.
    const peermem = if (std.c.getenv("MOONRING_FAKEVERBS_PEERMEM")) |v| v[0] == '1' else false;
    const gpu = if (peermem) fake_gpu.peermemRegion(@intFromPtr(addr), length) else null;
    return addMr(pd, addr, length, access, gpu);
}

fn addMr(pd: *abi.Pd, addr: ?*anyopaque, length: usize, access: c_int, gpu: ?fake_gpu.Region) ?*abi.Mr {
    const ctx = Ctx.of(pd.context);
    const mr = gpa.create(Mr) catch {
        setErrno(.NOMEM);
        return null;
    };
    ctx.mu.lock();
    defer ctx.mu.unlock();
    ctx.key_serial += 1;
    // Keys look random and are never 0, so a stale or made-up key does not hit a live region.
    const key: u32 = (ctx.key_serial *% 0x9e37_79b1) | 1;
    mr.* = .{ .base = .{ .context = pd.context, .pd = pd, .addr = addr, .length = length, .handle = ctx.key_serial, .lkey = key, .rkey = key }, .access = access, .gpu = gpu };
    ctx.mrs.append(gpa, mr) catch {
        gpa.destroy(mr);
        setErrno(.NOMEM);
        return null;
    };
    return &mr.base;
}

export fn ibv_reg_mr_iova2(pd: *abi.Pd, addr: ?*anyopaque, length: usize, iova: u64, access: c_uint) ?*abi.Mr {
    if (iova != @intFromPtr(addr)) {
        setErrno(.OPNOTSUPP);
        return null;
    }
    return ibv_reg_mr(pd, addr, length, @bitCast(access));
}

/// GPU memory by dma-buf: checked as the kernel does, then reached through CUDA (fake_gpu.zig:
/// an emulation of GPUDirect RDMA). The region's addresses are the iova (the device address,
/// as NCCL and moonring register). MOONRING_FAKEVERBS_DMABUF=0: unsupported (EOPNOTSUPP), as
/// on an older kernel or NIC.
export fn ibv_reg_dmabuf_mr(pd: *abi.Pd, offset: u64, length: usize, iova: u64, fd: c_int, access: c_int) ?*abi.Mr {
    if (std.c.getenv("MOONRING_FAKEVERBS_DMABUF")) |v| if (v[0] == '0') {
        setErrno(.OPNOTSUPP);
        return null;
    };
    switch (fake_gpu.checkDmabuf(offset, length, iova, fd, access)) {
        .errno => |e| {
            setErrno(e);
            return null;
        },
        .region => |region| return addMr(pd, @ptrFromInt(iova), length, access, region),
    }
}

export fn ibv_dereg_mr(mr_base: *abi.Mr) c_int {
    const ctx = Ctx.of(mr_base.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    for (ctx.mrs.items, 0..) |mr, i| {
        if (&mr.base == mr_base) {
            _ = ctx.mrs.swapRemove(i);
            gpa.destroy(mr);
            return 0;
        }
    }
    return @intFromEnum(posix.E.INVAL);
}

/// The region `lkey` names covers [addr, addr + len) with `access` (under ctx.mu).
fn localOk(ctx: *Ctx, pd: *abi.Pd, sge: abi.Sge, access: c_int) bool {
    if (sge.length == 0) return true;
    const mr = ctx.findMr(sge.lkey, false) orelse return false;
    return mr.base.pd == pd and mr.access & access == access and inRange(mr, sge.addr, sge.length);
}

fn inRange(mr: *const Mr, addr: u64, len: u64) bool {
    const start = @intFromPtr(mr.base.addr);
    return addr >= start and addr + len >= addr and addr + len <= start + mr.base.length;
}

// ---- completion queues -----------------------------------------------------------------------

export fn ibv_create_cq(context: *abi.Context, cqe: c_int, cq_context: ?*anyopaque, channel: ?*abi.CompChannel, comp_vector: c_int) ?*abi.Cq {
    if (cqe <= 0 or cqe > cqe_max or comp_vector != 0 or (channel != null and channel.?.context != context)) {
        setErrno(.INVAL);
        return null;
    }
    const ctx = Ctx.of(context);
    const cq = gpa.create(Cq) catch return null;
    const entries = gpa.alloc(abi.Wc, @intCast(cqe)) catch {
        gpa.destroy(cq);
        return null;
    };
    cq.* = .{
        .base = .{ .context = context, .channel = channel, .cq_context = cq_context, .handle = 0, .cqe = cqe, .mutex = .{}, .cond = .{}, .comp_events_completed = 0, .async_events_completed = 0 },
        .entries = entries,
    };
    ctx.mu.lock();
    ctx.cqs += 1;
    if (channel) |ch| ch.refcnt += 1;
    ctx.mu.unlock();
    return &cq.base;
}

export fn ibv_destroy_cq(cq_base: *abi.Cq) c_int {
    const cq = Cq.of(cq_base);
    const ctx = Ctx.of(cq_base.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    if (cq.users != 0) return @intFromEnum(posix.E.BUSY);
    // rdma-core's ibv_destroy_cq waits until every event taken was acked (a hang when one never
    // is); the test provider refuses instead, so the mistake shows.
    if (cq.base.comp_events_completed < cq.events_taken) return @intFromEnum(posix.E.BUSY);
    if (cq.base.channel) |ch| {
        Channel.of(ch).forget(cq);
        ch.refcnt -= 1;
    }
    ctx.cqs -= 1;
    gpa.free(cq.entries);
    gpa.destroy(cq);
    return 0;
}

fn pollCq(cq_base: *abi.Cq, num_entries: c_int, wc: [*]abi.Wc) callconv(.c) c_int {
    const cq = Cq.of(cq_base);
    const ctx = Ctx.of(cq_base.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    var n: usize = 0;
    while (n < @as(usize, @intCast(@max(num_entries, 0))) and cq.count > 0) : (n += 1) {
        wc[n] = cq.entries[cq.head];
        cq.head = (cq.head + 1) % cq.entries.len;
        cq.count -= 1;
    }
    // An overrun CQ is in error: what it held is read out, then every poll fails.
    if (n == 0 and cq.overrun) return -@as(c_int, @intFromEnum(posix.E.OVERFLOW));
    return @intCast(n);
}

/// Arms the CQ: its next completion (solicited_only: its next solicited receive or error)
/// raises one event on its channel. Asking for "any" after "solicited" widens the arm; the
/// reverse keeps "any" (rdma-unit-test's UpgradeRequest / DowngradeRequest).
fn reqNotifyCq(cq_base: *abi.Cq, solicited_only: c_int) callconv(.c) c_int {
    const cq = Cq.of(cq_base);
    const ctx = Ctx.of(cq_base.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    if (cq_base.channel == null) return @intFromEnum(posix.E.INVAL);
    cq.arm = if (solicited_only == 0 or cq.arm == .any) .any else .solicited;
    return 0;
}

export fn ibv_create_comp_channel(context: *abi.Context) ?*abi.CompChannel {
    const ctx = Ctx.of(context);
    const ch = gpa.create(Channel) catch {
        setErrno(.NOMEM);
        return null;
    };
    var pair: [2]posix.fd_t = undefined;
    if (std.c.socketpair(posix.AF.UNIX, posix.SOCK.STREAM | posix.SOCK.CLOEXEC, 0, &pair) != 0) {
        gpa.destroy(ch);
        return null;
    }
    ch.* = .{ .base = .{ .context = context, .fd = pair[0], .refcnt = 0 }, .bell_fd = pair[1] };
    ctx.mu.lock();
    ctx.channels += 1;
    ctx.mu.unlock();
    return &ch.base;
}

export fn ibv_destroy_comp_channel(channel: *abi.CompChannel) c_int {
    const ctx = Ctx.of(channel.context);
    const ch = Channel.of(channel);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    if (channel.refcnt != 0) return @intFromEnum(posix.E.BUSY);
    ctx.channels -= 1;
    posix.close(channel.fd);
    posix.close(ch.bell_fd);
    ch.waiting.deinit(gpa);
    gpa.destroy(ch);
    return 0;
}

/// The oldest waiting event: its CQ and cq_context. Blocks until there is one, unless the
/// application made the channel's fd non-blocking (then -1 with errno EAGAIN), like rdma-core.
export fn ibv_get_cq_event(channel: *abi.CompChannel, cq_out: *?*abi.Cq, cq_context_out: *?*anyopaque) c_int {
    const ctx = Ctx.of(channel.context);
    const ch = Channel.of(channel);
    while (true) {
        ctx.mu.lock();
        if (ch.take()) |cq| {
            cq.events_taken += 1;
            cq_out.* = &cq.base;
            cq_context_out.* = cq.base.cq_context;
            ctx.mu.unlock();
            return 0;
        }
        ctx.mu.unlock();
        const flags = posix.fcntl(channel.fd, posix.F.GETFL, 0) catch 0;
        if (flags & @as(usize, 1 << @bitOffsetOf(posix.O, "NONBLOCK")) != 0) {
            setErrno(.AGAIN);
            return -1;
        }
        var fds = [1]posix.pollfd{.{ .fd = channel.fd, .events = posix.POLL.IN, .revents = 0 }};
        _ = posix.poll(&fds, -1) catch {};
    }
}

/// Acks events taken from the CQ (rdma-core adds to comp_events_completed under cq->mutex).
export fn ibv_ack_cq_events(cq_base: *abi.Cq, nevents: c_uint) void {
    const ctx = Ctx.of(cq_base.context);
    ctx.mu.lock();
    defer ctx.mu.unlock();
    cq_base.comp_events_completed +%= nevents;
}

// ---- queue pairs -----------------------------------------------------------------------------

export fn ibv_create_qp(pd: *abi.Pd, init: *abi.QpInitAttr) ?*abi.Qp {
    const cap = init.cap;
    if (init.qp_type != abi.qpt_rc or init.srq != null or init.send_cq == null or init.recv_cq == null or
        cap.max_send_wr > qp_wr_max or cap.max_recv_wr > qp_wr_max or cap.max_send_sge > sge_max or
        cap.max_recv_sge > sge_max or cap.max_inline_data > inline_max)
    {
        setErrno(.INVAL);
        return null;
    }
    const ctx = Ctx.of(pd.context);
    const qp = gpa.create(Qp) catch return null;
    const listener = listen() catch {
        gpa.destroy(qp);
        setErrno(.NOMEM);
        return null;
    };
    ctx.mu.lock();
    defer ctx.mu.unlock();
    ctx.qp_serial += 1;
    qp.* = .{
        .base = .{ .context = pd.context, .qp_context = init.qp_context, .pd = pd, .send_cq = init.send_cq.?, .recv_cq = init.recv_cq.?, .srq = null, .handle = 0, .qp_num = listener.port, .state = .reset, .qp_type = abi.qpt_rc, .mutex = .{}, .cond = .{}, .events_completed = 0 },
        .serial = ctx.qp_serial,
        .cap = cap,
        .sq_sig_all = init.sq_sig_all != 0,
        .listener = listener.fd,
    };
    qp.sq.init(cap.max_send_wr) catch return null;
    qp.rq.init(cap.max_recv_wr) catch return null;
    ctx.qps.append(gpa, qp) catch return null;
    Cq.of(qp.base.send_cq).users += 1;
    Cq.of(qp.base.recv_cq).users += 1;
    return &qp.base;
}

const Listener = struct { fd: posix.fd_t, port: u16 };

/// A listener on every address of this namespace; its port is the QP number.
fn listen() !Listener {
    const fd = try posix.socket(posix.AF.INET, posix.SOCK.STREAM | posix.SOCK.NONBLOCK | posix.SOCK.CLOEXEC, 0);
    errdefer posix.close(fd);
    var addr = posix.sockaddr.in{ .port = 0, .addr = 0 };
    try posix.bind(fd, @ptrCast(&addr), @sizeOf(posix.sockaddr.in));
    try posix.listen(fd, 4);
    var len: posix.socklen_t = @sizeOf(posix.sockaddr.in);
    try posix.getsockname(fd, @ptrCast(&addr), &len);
    return .{ .fd = fd, .port = std.mem.bigToNative(u16, addr.port) };
}

export fn ibv_destroy_qp(qp_base: *abi.Qp) c_int {
    const qp = Qp.of(qp_base);
    const ctx = qp.ctx();
    ctx.mu.lock();
    defer ctx.mu.unlock();
    for (ctx.qps.items, 0..) |q, i| {
        if (q == qp) {
            _ = ctx.qps.swapRemove(i);
            break;
        }
    } else return @intFromEnum(posix.E.INVAL);
    Cq.of(qp.base.send_cq).users -= 1;
    Cq.of(qp.base.recv_cq).users -= 1;
    posix.close(qp.listener);
    if (qp.tx_fd) |fd| posix.close(fd);
    if (qp.rx_fd) |fd| posix.close(fd);
    gpa.free(qp.sq.items);
    gpa.free(qp.rq.items);
    qp.tx_out.deinit(gpa);
    qp.tx_in.deinit(gpa);
    qp.rx_in.deinit(gpa);
    qp.rx_out.deinit(gpa);
    gpa.destroy(qp);
    ctx.kick();
    return 0;
}

export fn ibv_query_qp(qp_base: *abi.Qp, attr: *abi.QpAttr, mask: c_int, init: *abi.QpInitAttr) c_int {
    _ = mask;
    const qp = Qp.of(qp_base);
    const ctx = qp.ctx();
    ctx.mu.lock();
    defer ctx.mu.unlock();
    attr.* = .{
        .qp_state = qp.state(),
        .cur_qp_state = qp.state(),
        .path_mtu = qp.path_mtu,
        .dest_qp_num = qp.dest_qpn,
        .qp_access_flags = qp.access,
        .cap = qp.cap,
        .port_num = qp.port,
        .timeout = qp.timeout,
        .retry_cnt = qp.retry_cnt,
        .rnr_retry = qp.rnr_retry,
        .min_rnr_timer = qp.min_rnr_timer,
    };
    attr.ah_attr.grh.dgid = qp.dest_gid;
    attr.ah_attr.is_global = 1;
    init.* = .{ .qp_context = qp.base.qp_context, .send_cq = qp.base.send_cq, .recv_cq = qp.base.recv_cq, .cap = qp.cap, .qp_type = abi.qpt_rc, .sq_sig_all = @intFromBool(qp.sq_sig_all) };
    return 0;
}

/// Attribute masks an RC transition requires and allows (IB spec 11.2.5.2, the kernel's
/// qp_state_table).
const Transition = struct { required: c_int, optional: c_int };
fn transition(from: abi.QpState, to: abi.QpState) ?Transition {
    const S = abi.QpState;
    if (to == S.reset or to == S.err) return .{ .required = abi.qp_state, .optional = 0 };
    return switch (from) {
        .reset => if (to == S.init) .{ .required = abi.qp_state | abi.qp_pkey_index | abi.qp_port | abi.qp_access_flags, .optional = 0 } else null,
        .init => switch (to) {
            .init => .{ .required = abi.qp_state, .optional = abi.qp_pkey_index | abi.qp_port | abi.qp_access_flags },
            .rtr => .{
                .required = abi.qp_state | abi.qp_av | abi.qp_path_mtu | abi.qp_dest_qpn | abi.qp_rq_psn | abi.qp_max_dest_rd_atomic | abi.qp_min_rnr_timer,
                .optional = abi.qp_pkey_index | abi.qp_access_flags,
            },
            else => null,
        },
        .rtr => if (to == S.rts) .{
            .required = abi.qp_state | abi.qp_sq_psn | abi.qp_timeout | abi.qp_retry_cnt | abi.qp_rnr_retry | abi.qp_max_qp_rd_atomic,
            .optional = abi.qp_cur_state | abi.qp_access_flags | abi.qp_min_rnr_timer,
        } else null,
        .rts => if (to == S.rts) .{ .required = abi.qp_state, .optional = abi.qp_cur_state | abi.qp_access_flags | abi.qp_min_rnr_timer } else null,
        else => null,
    };
}

export fn ibv_modify_qp(qp_base: *abi.Qp, attr: *abi.QpAttr, mask: c_int) c_int {
    const qp = Qp.of(qp_base);
    const ctx = qp.ctx();
    ctx.mu.lock();
    defer ctx.mu.unlock();
    if (mask & abi.qp_state == 0) return @intFromEnum(posix.E.INVAL);
    const from = qp.state();
    if (mask & abi.qp_cur_state != 0 and attr.cur_qp_state != from) return @intFromEnum(posix.E.INVAL);
    const t = transition(from, attr.qp_state) orelse return @intFromEnum(posix.E.INVAL);
    if (mask & t.required != t.required) return @intFromEnum(posix.E.INVAL);
    if (mask & ~(t.required | t.optional) != 0) return @intFromEnum(posix.E.INVAL);
    if (mask & abi.qp_port != 0 and attr.port_num != 1) return @intFromEnum(posix.E.INVAL);
    if (mask & abi.qp_access_flags != 0) qp.access = attr.qp_access_flags;
    if (mask & abi.qp_port != 0) qp.port = attr.port_num;
    if (mask & abi.qp_min_rnr_timer != 0) qp.min_rnr_timer = attr.min_rnr_timer;
    switch (attr.qp_state) {
        .rtr => {
            if (attr.path_mtu < 1 or attr.path_mtu > abi.mtu_4096) return @intFromEnum(posix.E.INVAL);
            if (attr.ah_attr.is_global == 0 or abi.gidIpv4(attr.ah_attr.grh.dgid) == null) return @intFromEnum(posix.E.INVAL);
            if (attr.ah_attr.grh.sgid_index >= gid_count) return @intFromEnum(posix.E.INVAL);
            qp.path_mtu = attr.path_mtu;
            qp.dest_gid = attr.ah_attr.grh.dgid;
            qp.dest_qpn = attr.dest_qp_num;
            qp.tx_fd = dial(qp.dest_gid, qp.dest_qpn, hello(qp)) catch null;
            qp.peer_lost = qp.tx_fd == null;
            qp.last_progress_ns = nowNs();
        },
        .rts => {
            qp.timeout = attr.timeout;
            qp.retry_cnt = attr.retry_cnt;
            qp.rnr_retry = attr.rnr_retry;
            qp.last_progress_ns = nowNs();
        },
        .err => enterError(qp),
        .reset => resetQp(qp),
        else => {},
    }
    if (attr.qp_state != .err) qp.base.state = attr.qp_state;
    ctx.kick();
    return 0;
}

fn hello(qp: *Qp) Hello {
    _ = qp.ctx();
    // The dialer names itself by the GID its peer was told about: the sgid of the same subnet
    // is not known here, so the peer checks the QP number only.
    return .{ .magic = hello_magic, .qpn = qp.base.qp_num, .gid = [_]u8{0} ** 16 };
}

fn dial(gid: abi.Gid, qpn: u32, greeting: Hello) !posix.fd_t {
    const ip = abi.gidIpv4(gid) orelse return error.NotIpv4;
    if (qpn == 0 or qpn > 0xffff) return error.BadQpn;
    const fd = try posix.socket(posix.AF.INET, posix.SOCK.STREAM | posix.SOCK.CLOEXEC, 0);
    errdefer posix.close(fd);
    var addr = posix.sockaddr.in{ .port = std.mem.nativeToBig(u16, @intCast(qpn)), .addr = @bitCast(ip) };
    try posix.connect(fd, @ptrCast(&addr), @sizeOf(posix.sockaddr.in));
    const one: c_int = 1;
    posix.setsockopt(fd, posix.IPPROTO.TCP, posix.TCP.NODELAY, std.mem.asBytes(&one)) catch {};
    _ = try posix.send(fd, std.mem.asBytes(&greeting), posix.MSG.NOSIGNAL);
    const flags = try posix.fcntl(fd, posix.F.GETFL, 0);
    _ = try posix.fcntl(fd, posix.F.SETFL, flags | @as(usize, 1 << @bitOffsetOf(posix.O, "NONBLOCK")));
    return fd;
}

/// To the error state: posted receives and unsent requests complete flushed.
fn enterError(qp: *Qp) void {
    qp.base.state = .err;
    while (qp.rq.len > 0) {
        const r = qp.rq.pop();
        Cq.of(qp.base.recv_cq).push(.{ .wr_id = r.wr_id, .status = .wr_flush_err, .opcode = abi.wc_recv, .qp_num = qp.base.qp_num });
    }
    var i: usize = 0;
    while (i < qp.sq.len) : (i += 1) {
        const e = qp.sq.at(i);
        if (e.status == null) e.status = .wr_flush_err;
    }
    completeSends(qp);
}

fn resetQp(qp: *Qp) void {
    qp.sq.head = 0;
    qp.sq.len = 0;
    qp.rq.head = 0;
    qp.rq.len = 0;
    if (qp.tx_fd) |fd| posix.close(fd);
    if (qp.rx_fd) |fd| posix.close(fd);
    qp.tx_fd = null;
    qp.rx_fd = null;
    qp.hello_seen = false;
    qp.tx_out.clearRetainingCapacity();
    qp.tx_out_off = 0;
    qp.tx_in.clearRetainingCapacity();
    qp.rx_in.clearRetainingCapacity();
    qp.rx_out.clearRetainingCapacity();
    qp.rx_out_off = 0;
    qp.rnr_parked = false;
    qp.rx_dropping = false;
    qp.peer_lost = false;
    qp.sq_failed = false;
}

/// Pops finished send entries in order; an error completion is always reported.
fn completeSends(qp: *Qp) void {
    while (qp.sq.len > 0) {
        const e = qp.sq.at(0);
        const status = e.status orelse return;
        const entry = qp.sq.pop();
        if (status != .success or entry.signaled) {
            Cq.of(qp.base.send_cq).push(.{ .wr_id = entry.wr_id, .status = status, .opcode = entry.opcode, .byte_len = entry.byte_len, .qp_num = qp.base.qp_num });
        }
        if (status != .success and qp.base.state != .err) enterError(qp);
    }
}

fn nowNs() u64 {
    return @intCast(std.time.nanoTimestamp());
}

/// How long a requester waits for a response before retry-exceeded: 4.096 us x 2^timeout per
/// try, retry_cnt + 1 tries (timeout 0 means forever).
fn requestTimeoutNs(qp: *const Qp) ?u64 {
    if (qp.timeout == 0) return null;
    const per_try: u64 = 4096 * (@as(u64, 1) << @intCast(@min(qp.timeout, 31)));
    return per_try * (@as(u64, qp.retry_cnt) + 1);
}

/// The RNR timer code of the IB spec (table 45), in ns.
fn rnrDelayNs(code: u8) u64 {
    const us = [_]u64{ 655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520 };
    return us[code & 31] * std.time.ns_per_us;
}

// ---- posting ---------------------------------------------------------------------------------

fn postSend(qp_base: *abi.Qp, first: ?*abi.SendWr, bad_wr: *?*abi.SendWr) callconv(.c) c_int {
    const qp = Qp.of(qp_base);
    const ctx = qp.ctx();
    ctx.mu.lock();
    defer ctx.mu.unlock();
    var it = first;
    while (it) |wr| : (it = wr.next) {
        const rc = postOne(qp, wr);
        if (rc != 0) {
            bad_wr.* = wr;
            flushTx(qp);
            ctx.kick();
            return rc;
        }
    }
    completeSends(qp);
    flushTx(qp);
    ctx.kick();
    return 0;
}

fn wcOpcode(opcode: u32) ?u32 {
    return switch (opcode) {
        abi.wr_send, abi.wr_send_with_imm => abi.wc_send,
        abi.wr_rdma_write, abi.wr_rdma_write_with_imm => abi.wc_rdma_write,
        abi.wr_rdma_read => abi.wc_rdma_read,
        else => null,
    };
}

fn postOne(qp: *Qp, wr: *abi.SendWr) c_int {
    const einval = @intFromEnum(posix.E.INVAL);
    if (qp.state() != .rts and qp.state() != .err) return einval;
    const opcode = wcOpcode(wr.opcode) orelse return einval;
    if (wr.num_sge < 0 or wr.num_sge > qp.cap.max_send_sge) return einval;
    const sges: []const abi.Sge = if (wr.num_sge == 0) &.{} else wr.sg_list.?[0..@intCast(wr.num_sge)];
    var total: u64 = 0;
    for (sges) |s| total += s.length;
    const is_inline = wr.send_flags & abi.send_inline != 0;
    if (is_inline and (wr.opcode == abi.wr_rdma_read or total > qp.cap.max_inline_data)) return einval;
    if (qp.sq.full()) return @intFromEnum(posix.E.NOMEM);
    var entry = SendEntry{
        .wr_id = wr.wr_id,
        .opcode = opcode,
        .signaled = qp.sq_sig_all or wr.send_flags & abi.send_signaled != 0,
        .byte_len = @intCast(@min(total, std.math.maxInt(u32))),
    };
    if (qp.state() == .err or qp.sq_failed) {
        entry.status = .wr_flush_err;
    } else if (total > 1 << 31) {
        entry.status = .loc_len_err;
    } else if (!is_inline and !sgesOk(qp, sges, if (wr.opcode == abi.wr_rdma_read) abi.access_local_write else 0)) {
        entry.status = .loc_prot_err;
    } else if (qp.peer_lost or failing_device == deviceIndex(qp.base.context.device)) {
        entry.status = .retry_exc_err;
    } else {
        if (wr.opcode == abi.wr_rdma_read) {
            @memcpy(entry.sges[0..sges.len], sges);
            entry.num_sge = @intCast(sges.len);
        }
        queueRequest(qp, wr, sges, total) catch return @intFromEnum(posix.E.NOMEM);
    }
    const failed = entry.status != null and entry.status.? != .wr_flush_err;
    if (failed) qp.sq_failed = true;
    qp.sq.push(entry);
    // A local error moves the QP to error once the entries before it complete.
    if (failed) completeSends(qp);
    return 0;
}

fn sgesOk(qp: *Qp, sges: []const abi.Sge, access: c_int) bool {
    for (sges) |s| if (!localOk(qp.ctx(), qp.base.pd, s, access)) return false;
    return true;
}

fn queueRequest(qp: *Qp, wr: *abi.SendWr, sges: []const abi.Sge, total: u64) !void {
    const kind: Kind = switch (wr.opcode) {
        abi.wr_send, abi.wr_send_with_imm => .send,
        abi.wr_rdma_read => .read,
        else => .write,
    };
    const header = RequestHeader{
        .kind = kind,
        .with_imm = @intFromBool(wr.opcode == abi.wr_send_with_imm or wr.opcode == abi.wr_rdma_write_with_imm),
        .rnr_retry = qp.rnr_retry,
        .solicited = @intFromBool(wr.send_flags & abi.send_solicited != 0),
        .imm = wr.imm_data,
        .length = @intCast(total),
        .rkey = if (kind == .send) 0 else wr.wr.rdma.rkey,
        .remote_addr = if (kind == .send) 0 else wr.wr.rdma.remote_addr,
    };
    try qp.tx_out.appendSlice(gpa, std.mem.asBytes(&header));
    if (kind == .read) return;
    const is_inline = wr.send_flags & abi.send_inline != 0;
    for (sges) |s| {
        const mr = if (is_inline or s.length == 0) null else qp.ctx().findMr(s.lkey, false);
        try qp.tx_out.ensureUnusedCapacity(gpa, s.length);
        const at = qp.tx_out.items.len;
        qp.tx_out.items.len += s.length;
        // Checked at post (sgesOk); a device region gone meanwhile sends zeros, as a NIC would
        // send whatever the pinned pages hold.
        if (!mrCopyOut(mr, qp.tx_out.items[at..][0..s.length], s.addr)) @memset(qp.tx_out.items[at..][0..s.length], 0);
    }
}

fn postRecv(qp_base: *abi.Qp, first: ?*abi.RecvWr, bad_wr: *?*abi.RecvWr) callconv(.c) c_int {
    const qp = Qp.of(qp_base);
    const ctx = qp.ctx();
    ctx.mu.lock();
    defer ctx.mu.unlock();
    var it = first;
    while (it) |wr| : (it = wr.next) {
        const einval = @intFromEnum(posix.E.INVAL);
        const rc: c_int = if (qp.state() == .reset) einval else if (wr.num_sge < 0 or wr.num_sge > qp.cap.max_recv_sge) einval else if (qp.rq.full()) @intFromEnum(posix.E.NOMEM) else 0;
        if (rc != 0) {
            bad_wr.* = wr;
            return rc;
        }
        var entry = RecvEntry{ .wr_id = wr.wr_id, .sges = undefined, .num_sge = @intCast(wr.num_sge) };
        if (wr.num_sge > 0) @memcpy(entry.sges[0..entry.num_sge], wr.sg_list.?[0..entry.num_sge]);
        if (qp.state() == .err) {
            Cq.of(qp.base.recv_cq).push(.{ .wr_id = wr.wr_id, .status = .wr_flush_err, .opcode = abi.wc_recv, .qp_num = qp.base.qp_num });
        } else {
            qp.rq.push(entry);
        }
    }
    if (qp.rnr_parked) ctx.kick();
    return 0;
}

// ---- the progress thread ---------------------------------------------------------------------

fn progressLoop(ctx: *Ctx) void {
    var fds: [1 + qps_max * 3]posix.pollfd = undefined;
    while (!ctx.stop.load(.acquire)) {
        var n: usize = 1;
        fds[0] = .{ .fd = ctx.wake[0], .events = posix.POLL.IN, .revents = 0 };
        var timers = false;
        ctx.mu.lock();
        for (ctx.qps.items) |qp| {
            if (n + 3 > fds.len) break;
            const s = qp.state();
            if (qp.rx_fd == null and (s == .rtr or s == .rts)) {
                fds[n] = .{ .fd = qp.listener, .events = posix.POLL.IN, .revents = 0 };
                n += 1;
            }
            if (qp.tx_fd) |fd| {
                const out: i16 = if (qp.tx_out.items.len > qp.tx_out_off) posix.POLL.OUT else 0;
                fds[n] = .{ .fd = fd, .events = posix.POLL.IN | out, .revents = 0 };
                n += 1;
            }
            if (qp.rx_fd) |fd| {
                const in: i16 = if (qp.rnr_parked) 0 else posix.POLL.IN;
                const out: i16 = if (qp.rx_out.items.len > qp.rx_out_off) posix.POLL.OUT else 0;
                fds[n] = .{ .fd = fd, .events = in | out, .revents = 0 };
                n += 1;
            }
            timers = timers or qp.rnr_parked or awaiting(qp) != null;
        }
        ctx.mu.unlock();
        _ = posix.poll(fds[0..n], if (timers) progress_poll_ms else 200) catch 0;
        var sink: [64]u8 = undefined;
        while ((posix.read(ctx.wake[0], &sink) catch 0) > 0) {}
        ctx.mu.lock();
        for (ctx.qps.items) |qp| service(qp);
        ctx.mu.unlock();
    }
}

/// The first send entry on the wire that has no response yet.
fn awaiting(qp: *Qp) ?*SendEntry {
    var i: usize = 0;
    while (i < qp.sq.len) : (i += 1) {
        const e = qp.sq.at(i);
        if (e.status == null) return e;
    }
    return null;
}

fn service(qp: *Qp) void {
    const s = qp.state();
    if (qp.rx_fd == null and (s == .rtr or s == .rts)) acceptPeer(qp);
    if (qp.rx_fd != null) {
        if (!qp.rnr_parked) readInto(qp, .rx);
        processRequests(qp);
        flushOut(qp, .rx);
    }
    if (qp.tx_fd != null) {
        flushTx(qp);
        readInto(qp, .tx);
        processResponses(qp);
    }
    if (awaiting(qp)) |e| {
        if (requestTimeoutNs(qp)) |limit| {
            if (nowNs() -| qp.last_progress_ns > limit) {
                e.status = .retry_exc_err;
                completeSends(qp);
            }
        }
    }
}

fn acceptPeer(qp: *Qp) void {
    const fd = posix.accept(qp.listener, null, null, posix.SOCK.NONBLOCK | posix.SOCK.CLOEXEC) catch return;
    const one: c_int = 1;
    posix.setsockopt(fd, posix.IPPROTO.TCP, posix.TCP.NODELAY, std.mem.asBytes(&one)) catch {};
    qp.rx_fd = fd;
    qp.hello_seen = false;
    qp.rx_dropping = false;
    qp.rx_in.clearRetainingCapacity();
}

const Side = enum { tx, rx };

fn readInto(qp: *Qp, side: Side) void {
    const fd = (if (side == .tx) qp.tx_fd else qp.rx_fd) orelse return;
    const buf = if (side == .tx) &qp.tx_in else &qp.rx_in;
    var total: usize = 0;
    while (total < read_pass_bytes_max) {
        buf.ensureUnusedCapacity(gpa, 256 << 10) catch return;
        const space = buf.unusedCapacitySlice();
        const got = posix.recv(fd, space, posix.MSG.DONTWAIT) catch |err| switch (err) {
            error.WouldBlock => return,
            else => return lost(qp, side),
        };
        if (got == 0) return lost(qp, side);
        buf.items.len += got;
        total += got;
    }
}

/// A connection closed: for our requests that is the peer gone (retry exceeded, as a NIC
/// reports when its retransmissions go unanswered); for the peer's requests, nothing to say.
fn lost(qp: *Qp, side: Side) void {
    if (side == .rx) {
        if (qp.rx_fd) |fd| posix.close(fd);
        qp.rx_fd = null;
        qp.rnr_parked = false;
        return;
    }
    if (qp.tx_fd) |fd| posix.close(fd);
    qp.tx_fd = null;
    qp.peer_lost = true;
    qp.tx_out.clearRetainingCapacity();
    qp.tx_out_off = 0;
    if (awaiting(qp)) |e| e.status = .retry_exc_err;
    completeSends(qp);
}

fn flushTx(qp: *Qp) void {
    flushOut(qp, .tx);
}

fn flushOut(qp: *Qp, side: Side) void {
    const fd = (if (side == .tx) qp.tx_fd else qp.rx_fd) orelse return;
    const buf = if (side == .tx) &qp.tx_out else &qp.rx_out;
    const off = if (side == .tx) &qp.tx_out_off else &qp.rx_out_off;
    while (off.* < buf.items.len) {
        const sent = posix.send(fd, buf.items[off.*..], posix.MSG.NOSIGNAL | posix.MSG.DONTWAIT) catch |err| switch (err) {
            error.WouldBlock => return,
            else => return lost(qp, side),
        };
        off.* += sent;
        if (side == .tx) qp.last_progress_ns = nowNs();
    }
    buf.clearRetainingCapacity();
    off.* = 0;
}

fn consume(buf: *Buffer, bytes: usize) void {
    const rest = buf.items.len - bytes;
    std.mem.copyForwards(u8, buf.items[0..rest], buf.items[bytes..]);
    buf.items.len = rest;
}

fn respond(qp: *Qp, status: Response, data: []const u8) void {
    const header = ResponseHeader{ .status = status, .length = @intCast(data.len) };
    qp.rx_out.appendSlice(gpa, std.mem.asBytes(&header)) catch return;
    qp.rx_out.appendSlice(gpa, data) catch return;
}

fn processRequests(qp: *Qp) void {
    var used: usize = 0;
    defer consume(&qp.rx_in, used);
    if (!qp.hello_seen) {
        if (qp.rx_in.items.len < @sizeOf(Hello)) return;
        const h = std.mem.bytesToValue(Hello, qp.rx_in.items[0..@sizeOf(Hello)]);
        used = @sizeOf(Hello);
        // A dial from some other QP (a stale peer): hang up on it.
        if (h.magic != hello_magic or h.qpn != qp.dest_qpn) {
            used = 0;
            return lost(qp, .rx);
        }
        qp.hello_seen = true;
    }
    while (qp.rx_fd != null) {
        const pending = qp.rx_in.items[used..];
        if (pending.len < @sizeOf(RequestHeader)) return;
        const header = std.mem.bytesToValue(RequestHeader, pending[0..@sizeOf(RequestHeader)]);
        const payload_len: usize = if (header.kind == .read) 0 else header.length;
        if (pending.len < @sizeOf(RequestHeader) + payload_len) return;
        const payload = pending[@sizeOf(RequestHeader)..][0..payload_len];
        const s = qp.state();
        if (qp.rx_dropping or (s != .rtr and s != .rts)) {
            used += @sizeOf(RequestHeader) + payload_len;
            continue;
        }
        if (!admitRnr(qp, header)) return;
        execute(qp, header, payload);
        used += @sizeOf(RequestHeader) + payload_len;
    }
}

fn needsReceive(header: RequestHeader) bool {
    return header.kind == .send or (header.kind == .write and header.with_imm != 0);
}

/// Receive-not-ready: the head request needs a posted receive and there is none. The request
/// waits (RNR NAK) and is retried every min_rnr_timer, rnr_retry times (7: forever).
fn admitRnr(qp: *Qp, header: RequestHeader) bool {
    if (!needsReceive(header) or qp.rq.len > 0) {
        qp.rnr_parked = false;
        return true;
    }
    const now = nowNs();
    if (!qp.rnr_parked) {
        qp.rnr_parked = true;
        qp.rnr_left = header.rnr_retry;
        qp.rnr_next_ns = now + rnrDelayNs(qp.min_rnr_timer);
        respond(qp, .rnr_wait, &.{});
        return false;
    }
    if (now < qp.rnr_next_ns) return false;
    qp.rnr_next_ns = now + rnrDelayNs(qp.min_rnr_timer);
    respond(qp, .rnr_wait, &.{});
    if (qp.rnr_left == 7) return false;
    if (qp.rnr_left > 0) {
        qp.rnr_left -= 1;
        return false;
    }
    // Retries exhausted: the request fails at the requester; what follows it is discarded.
    qp.rnr_parked = false;
    respond(qp, .rnr, &.{});
    qp.rx_dropping = true;
    return false;
}

fn remoteOk(qp: *Qp, header: RequestHeader, access: c_int) bool {
    if (header.length == 0) return true;
    if (@as(c_int, @bitCast(qp.access)) & access == 0) return false;
    const mr = qp.ctx().findMr(header.rkey, true) orelse return false;
    return mr.base.pd == qp.base.pd and mr.access & access != 0 and inRange(mr, header.remote_addr, header.length);
}

/// The region a checked remote access lands in (null for zero-length accesses).
fn remoteMr(qp: *Qp, header: RequestHeader) ?*const Mr {
    if (header.length == 0) return null;
    return qp.ctx().findMr(header.rkey, true);
}

/// A fatal responder error: NAK, the responder QP goes to error, the stream is discarded.
fn fail(qp: *Qp, status: Response) void {
    respond(qp, status, &.{});
    qp.rx_dropping = true;
    enterError(qp);
}

fn execute(qp: *Qp, header: RequestHeader, payload: []const u8) void {
    switch (header.kind) {
        .read => {
            if (!remoteOk(qp, header, abi.access_remote_read)) return fail(qp, .rem_access);
            respondRead(qp, header);
        },
        .write => {
            if (!remoteOk(qp, header, abi.access_remote_write)) return fail(qp, .rem_access);
            if (!mrCopyIn(remoteMr(qp, header), header.remote_addr, payload)) return fail(qp, .rem_access);
            if (header.with_imm != 0) {
                const r = qp.rq.pop();
                Cq.of(qp.base.recv_cq).pushCompletion(.{ .wr_id = r.wr_id, .opcode = abi.wc_recv_rdma_with_imm, .byte_len = header.length, .imm_data = header.imm, .wc_flags = abi.wc_with_imm, .qp_num = qp.base.qp_num, .src_qp = qp.dest_qpn }, header.solicited != 0);
            }
            respond(qp, .ack, &.{});
        },
        .send => receive(qp, header, payload),
    }
}

/// The read response: header, then the bytes read straight into the outgoing buffer.
fn respondRead(qp: *Qp, header: RequestHeader) void {
    const response = ResponseHeader{ .status = .ack, .length = header.length };
    qp.rx_out.ensureUnusedCapacity(gpa, @sizeOf(ResponseHeader) + header.length) catch return fail(qp, .rem_op);
    const at = qp.rx_out.items.len;
    qp.rx_out.appendSliceAssumeCapacity(std.mem.asBytes(&response));
    qp.rx_out.items.len += header.length;
    if (!mrCopyOut(remoteMr(qp, header), qp.rx_out.items[at + @sizeOf(ResponseHeader) ..], header.remote_addr)) {
        qp.rx_out.items.len = at;
        return fail(qp, .rem_access);
    }
}

fn receive(qp: *Qp, header: RequestHeader, payload: []const u8) void {
    const r = qp.rq.pop();
    const sges = r.sges[0..r.num_sge];
    var capacity: u64 = 0;
    for (sges) |s| capacity += s.length;
    const recv_cq = Cq.of(qp.base.recv_cq);
    if (capacity < payload.len) {
        recv_cq.push(.{ .wr_id = r.wr_id, .status = .loc_len_err, .opcode = abi.wc_recv, .qp_num = qp.base.qp_num });
        return fail(qp, .rem_inv_req);
    }
    if (!scatterOk(qp, sges, payload.len)) {
        recv_cq.push(.{ .wr_id = r.wr_id, .status = .loc_prot_err, .opcode = abi.wc_recv, .qp_num = qp.base.qp_num });
        return fail(qp, .rem_op);
    }
    scatter(qp, sges, payload);
    const flags: c_uint = if (header.with_imm != 0) abi.wc_with_imm else 0;
    recv_cq.pushCompletion(.{ .wr_id = r.wr_id, .opcode = abi.wc_recv, .byte_len = @intCast(payload.len), .imm_data = if (header.with_imm != 0) header.imm else 0, .wc_flags = flags, .qp_num = qp.base.qp_num, .src_qp = qp.dest_qpn }, header.solicited != 0);
    respond(qp, .ack, &.{});
}

/// The sges that `len` bytes land in are writable local memory of this QP's PD.
fn scatterOk(qp: *Qp, sges: []const abi.Sge, len: usize) bool {
    var left = len;
    for (sges) |s| {
        if (left == 0) return true;
        const part = @min(left, s.length);
        if (!localOk(qp.ctx(), qp.base.pd, .{ .addr = s.addr, .length = @intCast(part), .lkey = s.lkey }, abi.access_local_write)) return false;
        left -= part;
    }
    return true;
}

fn scatter(qp: *Qp, sges: []const abi.Sge, data: []const u8) void {
    var off: usize = 0;
    for (sges) |s| {
        if (off == data.len) return;
        const part = @min(data.len - off, s.length);
        _ = mrCopyIn(qp.ctx().findMr(s.lkey, false), s.addr, data[off..][0..part]);
        off += part;
    }
}

fn processResponses(qp: *Qp) void {
    var used: usize = 0;
    defer consume(&qp.tx_in, used);
    while (true) {
        const pending = qp.tx_in.items[used..];
        if (pending.len < @sizeOf(ResponseHeader)) return;
        const header = std.mem.bytesToValue(ResponseHeader, pending[0..@sizeOf(ResponseHeader)]);
        if (pending.len < @sizeOf(ResponseHeader) + header.length) return;
        const data = pending[@sizeOf(ResponseHeader)..][0..header.length];
        used += @sizeOf(ResponseHeader) + header.length;
        qp.last_progress_ns = nowNs();
        if (header.status == .rnr_wait) continue;
        const e = awaiting(qp) orelse continue; // a response to a request flushed meanwhile
        e.status = switch (header.status) {
            .ack => .success,
            .rnr => .rnr_retry_exc_err,
            .rem_access => .rem_access_err,
            .rem_inv_req => .rem_inv_req_err,
            .rem_op => .rem_op_err,
            .rnr_wait => unreachable,
        };
        if (header.status == .ack and e.opcode == abi.wc_rdma_read) scatter(qp, e.sges[0..e.num_sge], data);
        completeSends(qp);
    }
}
