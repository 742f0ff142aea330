//! The RDMA verbs link kind: one RC queue pair per peer, frames carried by RDMA write with
//! immediate into the peer's registered ring (the eager path), credits returned by RDMA write
//! into the sender's registered credit word (flow control: a sender never writes a slot the
//! receiver has not released), and zero-copy writes into memory the peer advertises
//! (`writeDirect`, for the rendezvous path).
//!
//! libibverbs is opened at run time (verbs/lib.zig: libibverbs.so.1, or the library that
//! $MOONRING_VERBS_LIB names, e.g. the test provider); no library or no usable device makes
//! `Device.open` fail with a reason the caller logs once, and the other link kinds carry on.
//!
//! A `Channel` looks like an shm.Ring pair to the link layer: tx `tryReserve / slotHeader /
//! slotPayload / publish / waitSpace`, rx `peek / slotHeader / slotPayload / release /
//! waitData`. One poller thread per device drains the completion queues (it never calls into
//! JS, and never blocks on a link): receive completions advance a channel's arrival count and
//! wake its link thread, send completions free send-queue entries, and an error completion
//! (a dead peer's QP: retry exceeded) fails the channel with a text naming the peer.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");
const abi = @import("../verbs/abi.zig");
const lib = @import("../verbs/lib.zig");
const device_mod = @import("verbs_device.zig");
const regcache_mod = @import("verbs_regcache.zig");
const rail_mod = @import("verbs_rail.zig");
pub const rails_max = rail_mod.rails_max;
pub const RailTail = rail_mod.Tail;
const op = @import("../op.zig");

pub const slot_header_bytes = 64;
pub const slot_count_default: u32 = 16;
pub const slot_bytes_default: u32 = 256 * 1024;
pub const slot_count_max: u32 = 256;
/// Channels (links) one device serves: one per peer of the largest world, and room for a
/// replacement made while the old link to a restarted peer still closes.
pub const channels_max = 2 * op.world_size_max;
/// Zero-copy writes one channel has in flight at once.
const direct_writes_max = 16;
/// Largest single RDMA write (messages above it go as several).
const direct_write_bytes_max: u64 = 1 << 30;
/// Regions the registration cache keeps registered.
pub const cache_entries_max = 64;
/// RC transport timeout 2^18 x 4.096 us ~ 1.07 s per try, 7 tries: a dead peer's QP errors
/// within ~8 s even where nothing else notices (the TCP link usually notices first).
const qp_timeout_code: u8 = 18;
const qp_retry_count: u8 = 7;
/// rnr_retry 7 = retry forever: receives are reposted by the poller, never starved for long.
const qp_rnr_retry: u8 = 7;
const qp_min_rnr_timer: u8 = 12; // 0.64 ms

comptime {
    std.debug.assert(@sizeOf(wire.FrameHeader) <= slot_header_bytes);
    std.debug.assert(slot_count_max <= 1 << 16);
}

pub const Config = struct {
    /// MOONRING_IB_HCA: which devices/ports, NCCL_IB_HCA style ("mlx5_0:1,mlx5_1",
    /// "^mlx5_2" excludes, "=mlx5_0" matches the whole name). Empty: the first active port.
    hca: []const u8 = "",
    /// MOONRING_IB_GID_INDEX: the GID to use; null: a RoCE v2 IPv4 GID where there is one.
    gid_index: ?u8 = null,
    slot_count: u32 = slot_count_default,
    slot_bytes: u32 = slot_bytes_default,
    /// Open the device after this many admitted ones (the rails of striping, one per NIC).
    device_skip: u8 = 0,

    pub fn fromEnv() Config {
        var config = Config{};
        if (sys.getenv("MOONRING_IB_HCA")) |value| config.hca = value;
        if (sys.getenv("MOONRING_IB_GID_INDEX")) |value| config.gid_index = std.fmt.parseInt(u8, value, 10) catch null;
        return config;
    }
};

pub const OpenError = error{ NoLibrary, NoDevice, OutOfMemory };

/// Why a device could not be opened or a channel failed (for the log and /cluster).
pub const Reason = struct {
    len: usize = 0,
    text: [256]u8 = undefined,

    pub fn set(self: *Reason, comptime fmt: []const u8, args: anytype) void {
        self.len = (std.fmt.bufPrint(&self.text, fmt, args) catch self.text[0..]).len;
    }
    pub fn message(self: *const Reason) []const u8 {
        return self.text[0..self.len];
    }
};

/// What one side tells the other in the data-plane handshake (the verbs kind's opaque blob).
pub const Blob = extern struct {
    magic: u32 = blob_magic,
    qpn: u32,
    gid: [16]u8,
    lid: u16,
    link_layer: u8,
    mtu: u8,
    slot_count: u32,
    slot_bytes: u32,
    reserved: u32 = 0,
    ring_addr: u64,
    ring_rkey: u32,
    credit_rkey: u32,
    credit_addr: u64,

    pub const blob_magic: u32 = 0x4d52_5642; // "MRVB"

    pub fn valid(self: *const Blob) bool {
        return self.magic == blob_magic and self.slot_count > 0 and self.slot_count <= slot_count_max and
            self.slot_bytes > 0 and self.slot_bytes <= wire.chunk_bytes_max and self.slot_bytes % 64 == 0 and
            self.qpn != 0 and self.reserved == 0;
    }
};

comptime {
    std.debug.assert(@sizeOf(Blob) == 64);
}

/// The device, its port / GID selection and its poller thread (verbs_device.zig).
pub const Device = device_mod.Device;
pub const hcaAdmits = device_mod.hcaAdmits;
/// The zero-copy registration cache (verbs_regcache.zig).
pub const RegCache = regcache_mod.RegCache;
pub const buffers = regcache_mod.buffers;

/// Where a QP connects to: the peer QP's number and address.
pub const Target = struct { qpn: u32, lid: u16, mtu: u8, gid: [16]u8 };

/// INIT -> RTR -> RTS toward `target` with this module's RC settings (channels and rails).
pub fn toRts(dev: *Device, qp: *abi.Qp, target: Target, peer: u32, why: *Reason) error{NoDevice}!void {
    var attr = abi.QpAttr{
        .qp_state = .rtr,
        .path_mtu = @min(dev.mtu, target.mtu),
        .dest_qp_num = target.qpn,
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = qp_min_rnr_timer,
    };
    attr.ah_attr = .{ .port_num = dev.port, .dlid = target.lid };
    if (dev.link_layer == abi.link_layer_ethernet) {
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh = .{ .dgid = .{ .raw = target.gid }, .sgid_index = dev.gid_index, .hop_limit = 64 };
    }
    const rtr_mask = abi.qp_state | abi.qp_av | abi.qp_path_mtu | abi.qp_dest_qpn | abi.qp_rq_psn | abi.qp_max_dest_rd_atomic | abi.qp_min_rnr_timer;
    if (dev.api.modify_qp(qp, &attr, rtr_mask) != 0) return Channel.fail(why, "QP to RTR toward rank {d} failed on {s}", .{ peer, dev.name() });
    attr = .{ .qp_state = .rts, .timeout = qp_timeout_code, .retry_cnt = qp_retry_count, .rnr_retry = qp_rnr_retry, .max_rd_atomic = 1 };
    const rts_mask = abi.qp_state | abi.qp_sq_psn | abi.qp_timeout | abi.qp_retry_cnt | abi.qp_rnr_retry | abi.qp_max_qp_rd_atomic;
    if (dev.api.modify_qp(qp, &attr, rts_mask) != 0) return Channel.fail(why, "QP to RTS toward rank {d} failed on {s}", .{ peer, dev.name() });
}

// ---- channels --------------------------------------------------------------------------------

const wr_kind_ring: u64 = 1;
const wr_kind_credit: u64 = 2;
const wr_kind_direct: u64 = 3;
/// The credit region: [0] the peer's released count (written by the peer), [8] the source of
/// our credit writes, [16] the peer's "ready" flag, [24] the source of our ready write, [32]
/// the source of our "taken" writes, [64..] the taken words of our rendezvous slots.
const ready_offset = 16;
const ready_source_offset = 24;
const ready_value: u64 = 0x5245_4144_5921; // "READY!"
/// [64 + 8 i]: rendezvous slot i's "taken" word, written by the peer when it has read the
/// message exposed under that slot (the token of that exposure).
const taken_offset = 64;
pub const rendezvous_slots = 32;
const wr_kind_read: u64 = 4;
/// Rendezvous pulls into a posted receive go in pieces of at most this (one RDMA read each).
pub const pull_bytes_max: u64 = 64 << 20;

/// What a rendezvous descriptor frame carries (link_kind.Rendezvous).
pub const Desc = extern struct {
    addr: u64,
    len: u64,
    rkey: u32,
    slot: u32,
    token: u64,
    /// The same bytes registered on the sender's rails (bit i of rail_mask: rail i has them).
    rail_rkeys: [rails_max]u32 = [_]u32{0} ** rails_max,
    rail_mask: u32 = 0,
};

comptime {
    std.debug.assert(@sizeOf(Desc) <= wire.rendezvous_desc_bytes_max);
    std.debug.assert(taken_offset + 8 * rendezvous_slots <= 4096);
}

/// Page-aligned registered memory.
const Region = struct {
    bytes: []align(4096) u8,
    mr: *abi.Mr,

    fn alloc(dev: *Device, len: usize, access: c_int) ?Region {
        const bytes = std.heap.page_allocator.alignedAlloc(u8, 4096, std.mem.alignForward(usize, len, 4096)) catch return null;
        @memset(bytes, 0);
        const mr = dev.api.reg_mr(dev.pd, bytes.ptr, bytes.len, access) orelse {
            std.heap.page_allocator.free(bytes);
            return null;
        };
        return .{ .bytes = bytes, .mr = mr };
    }

    fn free(region: Region, dev: *Device) void {
        _ = dev.api.dereg_mr(region.mr);
        std.heap.page_allocator.free(region.bytes);
    }
};

pub const Channel = struct {
    dev: *Device,
    peer: u32,
    cq: *abi.Cq,
    qp: *abi.Qp,
    slot_count: u32,
    slot_bytes: u32,
    /// The peer writes frames here.
    rx: Region,
    /// Frames are assembled here before the NIC reads them.
    tx: Region,
    /// [0]: the peer's released count, written by the peer's NIC. [8]: our released count, the
    /// source of the credit write (inline).
    credit: Region,
    remote: ?Blob = null,
    sq_depth: u32,
    post_mu: std.Thread.Mutex = .{},
    sq_inflight: std.atomic.Value(u32) = .init(0),
    tx_head: u32 = 0,
    /// Frames that have landed in `rx` (futex word) and frames released.
    arrived: std.atomic.Value(u32) = .init(0),
    consumed: u32 = 0,
    direct_done: std.atomic.Value(u64) = .init(0),
    direct_posted: u64 = 0,
    failed: std.atomic.Value(bool) = .init(false),
    reason: Reason = .{},
    /// The acceptor's side waits for the dialer's "ready" write before its first frame: a
    /// frame sent to a QP not yet in RTR is dropped by hardware and only retransmitted after
    /// the transport timeout (~1 s).
    wait_ready: bool = false,
    /// Rendezvous exposures in flight (bit i: slot i) and their registrations; under post_mu.
    exposed_mask: u32 = 0,
    exposed: [rendezvous_slots]?RegCache.Handle = [_]?RegCache.Handle{null} ** rendezvous_slots,
    exposed_token: [rendezvous_slots]u64 = [_]u64{0} ** rendezvous_slots,
    /// Exposures whose sender gave up waiting (its op failed): the peer may still read them,
    /// so they stay registered until their taken word shows up (reclaimed by expose) or the
    /// channel goes.
    abandoned_mask: u32 = 0,
    token_next: u64 = 1,
    reads_posted: u64 = 0,
    reads_done: std.atomic.Value(u64) = .init(0),
    /// Registered landing area for pulls whose destination is a stash buffer.
    bounce: ?Region = null,
    /// Striping (verbs_rail.zig): rails made, and how many are connected (the peer had as many).
    rails: [rails_max]?rail_mod.Rail = [_]?rail_mod.Rail{null} ** rails_max,
    rail_made: u32 = 0,
    rail_count: u32 = 0,
    /// Rendezvous exposures' registrations on the rails' devices (under post_mu).
    exposed_rails: [rendezvous_slots][rails_max]?RegCache.Handle = [_][rails_max]?RegCache.Handle{[_]?RegCache.Handle{null} ** rails_max} ** rendezvous_slots,

    fn stride(c: *const Channel) u64 {
        return slot_header_bytes + @as(u64, c.slot_bytes);
    }

    /// A channel to `peer` with its QP in INIT and receives posted; `blob()` is what the peer
    /// needs, `connect()` takes the peer's.
    pub fn create(dev: *Device, peer: u32, why: *Reason) error{ OutOfMemory, NoDevice }!*Channel {
        const n = dev.config.slot_count;
        std.debug.assert(n > 0 and n <= slot_count_max and dev.config.slot_bytes % 64 == 0);
        const c = try std.heap.c_allocator.create(Channel);
        errdefer std.heap.c_allocator.destroy(c);
        const ring_bytes = @as(usize, n) * (slot_header_bytes + dev.config.slot_bytes);
        const local = abi.access_local_write;
        const remote = abi.access_local_write | abi.access_remote_write;
        const rx = Region.alloc(dev, ring_bytes, remote) orelse return fail(why, "ring registration ({d} bytes) failed on {s}", .{ ring_bytes, dev.name() });
        errdefer rx.free(dev);
        const tx = Region.alloc(dev, ring_bytes, local) orelse return fail(why, "staging registration failed on {s}", .{dev.name()});
        errdefer tx.free(dev);
        const credit = Region.alloc(dev, 4096, remote) orelse return fail(why, "credit registration failed on {s}", .{dev.name()});
        errdefer credit.free(dev);
        const bounce = Region.alloc(dev, dev.config.slot_bytes, local) orelse return fail(why, "bounce registration failed on {s}", .{dev.name()});
        errdefer bounce.free(dev);
        const sq_depth = 2 * n + direct_writes_max + 2;
        const cq = dev.api.create_cq(dev.context, @intCast(sq_depth + n + 4), null, dev.comp_channel, 0) orelse return fail(why, "ibv_create_cq failed on {s}", .{dev.name()});
        errdefer _ = dev.api.destroy_cq(cq);
        var init_attr = abi.QpInitAttr{ .send_cq = cq, .recv_cq = cq, .cap = .{ .max_send_wr = sq_depth, .max_recv_wr = n, .max_send_sge = 1, .max_recv_sge = 1, .max_inline_data = 64 }, .sq_sig_all = 1 };
        const qp = dev.api.create_qp(dev.pd, &init_attr) orelse return fail(why, "ibv_create_qp failed on {s}", .{dev.name()});
        errdefer _ = dev.api.destroy_qp(qp);
        c.* = .{ .dev = dev, .peer = peer, .cq = cq, .qp = qp, .slot_count = n, .slot_bytes = dev.config.slot_bytes, .rx = rx, .tx = tx, .credit = credit, .sq_depth = sq_depth, .bounce = bounce };
        var attr = abi.QpAttr{ .qp_state = .init, .port_num = dev.port, .qp_access_flags = @intCast(abi.access_local_write | abi.access_remote_write | abi.access_remote_read) };
        if (dev.api.modify_qp(qp, &attr, abi.qp_state | abi.qp_pkey_index | abi.qp_port | abi.qp_access_flags) != 0)
            return fail(why, "QP to INIT failed on {s}", .{dev.name()});
        var i: u32 = 0;
        while (i < n) : (i += 1) {
            if (!c.postReceive()) return fail(why, "ibv_post_recv failed on {s}", .{dev.name()});
        }
        if (!dev.attach(c)) return fail(why, "more than {d} verbs channels on {s}", .{ channels_max, dev.name() });
        return c;
    }

    fn fail(why: *Reason, comptime fmt: []const u8, args: anytype) error{NoDevice} {
        why.set(fmt, args);
        return error.NoDevice;
    }

    pub fn blob(c: *const Channel) Blob {
        return .{
            .qpn = c.qp.qp_num,
            .gid = c.dev.gid.raw,
            .lid = c.dev.lid,
            .link_layer = c.dev.link_layer,
            .mtu = @intCast(c.dev.mtu),
            .slot_count = c.slot_count,
            .slot_bytes = c.slot_bytes,
            .ring_addr = @intFromPtr(c.rx.bytes.ptr),
            .ring_rkey = c.rx.mr.rkey,
            .credit_addr = @intFromPtr(c.credit.bytes.ptr),
            .credit_rkey = c.credit.mr.rkey,
        };
    }

    /// INIT -> RTR -> RTS toward the peer's QP.
    pub fn connect(c: *Channel, remote: Blob, why: *Reason) error{NoDevice}!void {
        if (!remote.valid() or remote.slot_count != c.slot_count or remote.slot_bytes != c.slot_bytes)
            return fail(why, "rank {d} sent a bad verbs handshake", .{c.peer});
        if (remote.link_layer != c.dev.link_layer)
            return fail(why, "rank {d} is on another link layer ({d} vs {d})", .{ c.peer, remote.link_layer, c.dev.link_layer });
        try toRts(c.dev, c.qp, .{ .qpn = remote.qpn, .lid = remote.lid, .mtu = remote.mtu, .gid = remote.gid }, c.peer, why);
        c.remote = remote;
    }

    /// Makes one rail (striping; verbs_rail.zig) per further device of `devices`, in INIT.
    pub fn addRails(c: *Channel, devices: []const *Device, why: *Reason) error{NoDevice}!void {
        std.debug.assert(c.rail_made == 0 and devices.len <= rails_max);
        for (devices) |d| {
            c.rails[c.rail_made] = try rail_mod.Rail.create(d, why);
            c.rail_made += 1;
        }
    }

    /// The blob's tail: this side's rails.
    pub fn railTail(c: *const Channel) rail_mod.Tail {
        var tail = rail_mod.Tail{ .count = c.rail_made, .rails = undefined };
        @memset(std.mem.asBytes(&tail.rails), 0);
        for (c.rails[0..c.rail_made], 0..) |r, i| tail.rails[i] = r.?.info();
        return tail;
    }

    /// Connects min(ours, theirs) rails, in device order on both sides.
    pub fn connectRails(c: *Channel, tail: rail_mod.Tail, why: *Reason) error{NoDevice}!void {
        const n = @min(c.rail_made, tail.count);
        for (0..n) |i| try c.rails[i].?.connect(tail.rails[i], c.peer, why);
        c.rail_count = @intCast(n);
    }

    pub fn destroy(c: *Channel) void {
        const dev = c.dev;
        dev.detach(c);
        for (&c.rails) |*maybe| if (maybe.*) |*r| r.destroy();
        for (c.exposed_rails) |handles| for (handles, 0..) |maybe, i| if (maybe) |h| c.rails[i].?.dev.cache.release(c.rails[i].?.dev, h);
        var attr = abi.QpAttr{ .qp_state = .err };
        _ = dev.api.modify_qp(c.qp, &attr, abi.qp_state);
        _ = dev.api.destroy_qp(c.qp);
        device_mod.destroyCq(dev, c.cq);
        for (c.exposed) |maybe| if (maybe) |h| dev.cache.release(dev, h);
        c.rx.free(dev);
        c.tx.free(dev);
        c.credit.free(dev);
        if (c.bounce) |b| b.free(dev);
        std.heap.c_allocator.destroy(c);
    }

    pub fn isFailed(c: *const Channel) bool {
        return c.failed.load(.acquire);
    }

    /// Fails the channel once (the first reason wins) and wakes its waiters.
    pub fn failWith(c: *Channel, comptime fmt: []const u8, args: anytype) void {
        c.post_mu.lock();
        defer c.post_mu.unlock();
        if (c.failed.load(.acquire)) return;
        c.reason.set(fmt, args);
        c.failed.store(true, .release);
        _ = c.arrived.fetchAdd(0, .seq_cst);
        std.Thread.Futex.wake(&c.arrived, std.math.maxInt(u32));
    }

    fn postReceive(c: *Channel) bool {
        var wr = abi.RecvWr{ .wr_id = wr_kind_ring, .sg_list = null, .num_sge = 0 };
        return c.dev.api.postRecv(c.qp, &wr) == 0;
    }

    fn postLocked(c: *Channel, wr: *abi.SendWr) bool {
        _ = c.sq_inflight.fetchAdd(1, .acq_rel);
        const rc = c.dev.api.postSend(c.qp, wr);
        if (rc != 0) {
            _ = c.sq_inflight.fetchSub(1, .acq_rel);
            return false;
        }
        if (wr.num_sge > 0) _ = c.dev.bytes.fetchAdd(wr.sg_list.?[0].length, .monotonic);
        return true;
    }

    fn peerReleased(c: *const Channel) u32 {
        const word: *const volatile u64 = @ptrCast(@alignCast(c.credit.bytes.ptr));
        return @truncate(word.*);
    }

    // ---- producer (one sender at a time: the link layer serializes senders) ----

    /// A free slot of the peer's ring, or null when the peer has not released one yet (or the
    /// send queue is full).
    pub fn tryReserve(c: *Channel) ?u32 {
        if (c.wait_ready) {
            const flag: *const volatile u64 = @ptrCast(@alignCast(c.credit.bytes.ptr + ready_offset));
            if (flag.* != ready_value) return null;
            c.wait_ready = false;
        }
        if (c.tx_head -% c.peerReleased() >= c.slot_count) return null;
        if (c.sq_inflight.load(.acquire) + 2 > c.sq_depth) return null;
        return c.tx_head;
    }

    pub fn waitSpace(c: *Channel, timeout_ns: u64) void {
        _ = c;
        std.Thread.sleep(@min(timeout_ns, 20 * std.time.ns_per_us));
    }

    pub fn txHeader(c: *Channel, index: u32) *wire.FrameHeader {
        return @ptrCast(@alignCast(c.tx.bytes.ptr + (index % c.slot_count) * c.stride()));
    }

    pub fn txPayload(c: *Channel, index: u32) [*]u8 {
        return c.tx.bytes.ptr + (index % c.slot_count) * c.stride() + slot_header_bytes;
    }

    /// RDMA-writes slot `index` (header + chunk) into the peer's ring, with the slot number as
    /// the immediate: the peer's receive completion says it has landed.
    pub fn publish(c: *Channel, index: u32) bool {
        std.debug.assert(index == c.tx_head);
        const remote = c.remote.?;
        const len: u32 = slot_header_bytes + c.txHeader(index).chunk_len;
        const offset = (index % c.slot_count) * c.stride();
        var sge = abi.Sge{ .addr = @intFromPtr(c.tx.bytes.ptr) + offset, .length = len, .lkey = c.tx.mr.lkey };
        var wr = abi.SendWr{ .wr_id = wr_kind_ring, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_write_with_imm, .send_flags = abi.send_signaled, .imm_data = abi.immEncode(index) };
        wr.wr = .{ .rdma = .{ .remote_addr = remote.ring_addr + offset, .rkey = remote.ring_rkey } };
        c.post_mu.lock();
        defer c.post_mu.unlock();
        if (c.failed.load(.acquire)) return false;
        if (!c.postLocked(&wr)) return false;
        c.tx_head +%= 1;
        return true;
    }

    /// Dialer side, once connected: tells the peer (which connected first) it may send.
    pub fn markPeerReady(c: *Channel) bool {
        const source: *u64 = @ptrCast(@alignCast(c.credit.bytes.ptr + ready_source_offset));
        source.* = ready_value;
        var sge = abi.Sge{ .addr = @intFromPtr(source), .length = 8, .lkey = c.credit.mr.lkey };
        var wr = abi.SendWr{ .wr_id = wr_kind_credit, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_write, .send_flags = abi.send_signaled | abi.send_inline };
        wr.wr = .{ .rdma = .{ .remote_addr = c.remote.?.credit_addr + ready_offset, .rkey = c.remote.?.credit_rkey } };
        c.post_mu.lock();
        defer c.post_mu.unlock();
        return !c.failed.load(.acquire) and c.postLocked(&wr);
    }

    // ---- consumer (the link thread) ----

    pub fn peek(c: *Channel) ?u32 {
        if (c.arrived.load(.acquire) == c.consumed) return null;
        return c.consumed;
    }

    pub fn rxHeader(c: *Channel, index: u32) *const wire.FrameHeader {
        return @ptrCast(@alignCast(c.rx.bytes.ptr + (index % c.slot_count) * c.stride()));
    }

    pub fn rxPayload(c: *Channel, index: u32) [*]const u8 {
        return c.rx.bytes.ptr + (index % c.slot_count) * c.stride() + slot_header_bytes;
    }

    /// Frees slot `index` and tells the peer (its credit word) so it may reuse it.
    pub fn release(c: *Channel, index: u32) bool {
        std.debug.assert(index == c.consumed);
        c.consumed +%= 1;
        const source: *u64 = @ptrCast(@alignCast(c.credit.bytes.ptr + 8));
        c.post_mu.lock();
        defer c.post_mu.unlock();
        if (c.failed.load(.acquire)) return false;
        // The send queue has room: ring writes and credits are each bounded by slot_count.
        source.* = c.consumed;
        var sge = abi.Sge{ .addr = @intFromPtr(source), .length = 8, .lkey = c.credit.mr.lkey };
        var wr = abi.SendWr{ .wr_id = wr_kind_credit, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_write, .send_flags = abi.send_signaled | abi.send_inline };
        wr.wr = .{ .rdma = .{ .remote_addr = c.remote.?.credit_addr, .rkey = c.remote.?.credit_rkey } };
        return c.postLocked(&wr);
    }

    pub fn waitData(c: *Channel, timeout_ns: u64) void {
        const seen = c.arrived.load(.acquire);
        if (seen != c.consumed or c.failed.load(.acquire)) return;
        std.Thread.Futex.timedWait(&c.arrived, seen, timeout_ns) catch {};
    }

    pub fn wakeAll(c: *Channel) void {
        std.Thread.Futex.wake(&c.arrived, std.math.maxInt(u32));
    }

    // ---- zero copy ----

    /// RDMA-writes `local` to (remote_addr, rkey) of the peer and waits for the write to
    /// complete locally (the bytes have left `local`). A frame published after this returns
    /// lands after these bytes (RC ordering): that frame is the receiver's completion.
    pub fn writeDirect(c: *Channel, local: []const u8, remote_addr: u64, rkey: u32, abort: anytype) bool {
        if (local.len == 0) return true;
        const handle = c.dev.cache.acquire(c.dev, @intFromPtr(local.ptr), local.len) orelse return false;
        defer c.dev.cache.release(c.dev, handle);
        return c.writeRegistered(@intFromPtr(local.ptr), local.len, handle.lkey, remote_addr, rkey, abort);
    }

    /// writeDirect of registered memory (`lkey`; host or device: verbs_gpu.zig).
    pub fn writeRegistered(c: *Channel, local: u64, bytes: u64, lkey: u32, remote_addr: u64, rkey: u32, abort: anytype) bool {
        var offset: u64 = 0;
        var target: u64 = 0;
        while (offset < bytes) {
            const len: u32 = @intCast(@min(direct_write_bytes_max, bytes - offset));
            while (c.sq_inflight.load(.acquire) + 2 > c.sq_depth) {
                if (c.isFailed() or abort.check()) return false;
                std.Thread.sleep(20 * std.time.ns_per_us);
            }
            var sge = abi.Sge{ .addr = local + offset, .length = len, .lkey = lkey };
            var wr = abi.SendWr{ .wr_id = wr_kind_direct, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_write, .send_flags = abi.send_signaled };
            wr.wr = .{ .rdma = .{ .remote_addr = remote_addr + offset, .rkey = rkey } };
            c.post_mu.lock();
            const ok = !c.failed.load(.acquire) and c.postLocked(&wr);
            if (ok) {
                c.direct_posted += 1;
                target = c.direct_posted;
            }
            c.post_mu.unlock();
            if (!ok) return false;
            offset += len;
        }
        while (c.direct_done.load(.acquire) < target) {
            if (c.isFailed() or abort.check()) return false;
            std.Thread.sleep(10 * std.time.ns_per_us);
        }
        return true;
    }

    /// Registers [addr, addr + len) for the peer to write into (the rendezvous receiver's
    /// advertisement); release the handle once the message is complete.
    pub fn exposeRange(c: *Channel, addr: usize, len: usize) ?RegCache.Handle {
        return c.dev.cache.acquire(c.dev, addr, len);
    }

    pub fn unexposeRange(c: *Channel, handle: RegCache.Handle) void {
        c.dev.cache.release(c.dev, handle);
    }

    // ---- rendezvous (link_kind.Rendezvous) ----

    fn takenWord(c: *Channel, slot: u32) *const volatile u64 {
        return @ptrCast(@alignCast(c.credit.bytes.ptr + taken_offset + 8 * slot));
    }

    /// Sender: registers `bytes` for the peer to read and describes them; null when all
    /// rendezvous slots are in use or registration fails (the message goes as frames).
    pub fn expose(c: *Channel, bytes: []const u8) ?Desc {
        std.debug.assert(bytes.len > 0);
        const handle = c.dev.cache.acquire(c.dev, @intFromPtr(bytes.ptr), bytes.len) orelse return null;
        c.reclaimAbandoned();
        c.post_mu.lock();
        defer c.post_mu.unlock();
        const free = ~c.exposed_mask;
        if (free == 0 or c.failed.load(.acquire)) {
            c.dev.cache.release(c.dev, handle);
            return null;
        }
        const slot: u32 = @ctz(free);
        c.exposed_mask |= @as(u32, 1) << @intCast(slot);
        c.exposed[slot] = handle;
        const token = c.token_next;
        c.token_next += 1;
        c.exposed_token[slot] = token;
        const word: *volatile u64 = @ptrCast(@alignCast(c.credit.bytes.ptr + taken_offset + 8 * slot));
        word.* = 0;
        var desc = Desc{ .addr = @intFromPtr(bytes.ptr), .len = bytes.len, .rkey = handle.rkey, .slot = slot, .token = token };
        if (bytes.len >= rail_mod.stripe_bytes_min) c.exposeRails(bytes, &desc);
        return desc;
    }

    /// The exposure registered on every connected rail's device too (under post_mu).
    fn exposeRails(c: *Channel, bytes: []const u8, desc: *Desc) void {
        for (c.rails[0..c.rail_count], 0..) |maybe, i| {
            const d = maybe.?.dev;
            const h = d.cache.acquire(d, @intFromPtr(bytes.ptr), bytes.len) orelse continue;
            c.exposed_rails[desc.slot][i] = h;
            desc.rail_rkeys[i] = h.rkey;
            desc.rail_mask |= @as(u32, 1) << @intCast(i);
        }
    }

    /// Sender: releases an exposure (after the peer took it, or when it was never sent).
    pub fn unexposeSlot(c: *Channel, desc: Desc) void {
        std.debug.assert(desc.slot < rendezvous_slots);
        c.post_mu.lock();
        const handle = c.exposed[desc.slot];
        c.exposed[desc.slot] = null;
        c.exposed_mask &= ~(@as(u32, 1) << @intCast(desc.slot));
        const rail_handles = c.exposed_rails[desc.slot];
        c.exposed_rails[desc.slot] = [_]?RegCache.Handle{null} ** rails_max;
        c.post_mu.unlock();
        if (handle) |h| c.dev.cache.release(c.dev, h);
        for (rail_handles, 0..) |maybe, i| if (maybe) |h| c.rails[i].?.dev.cache.release(c.rails[i].?.dev, h);
    }

    /// Sender: its op gave up on this exposure; it is released once the peer took it.
    pub fn abandonSlot(c: *Channel, desc: Desc) void {
        c.post_mu.lock();
        defer c.post_mu.unlock();
        c.abandoned_mask |= @as(u32, 1) << @intCast(desc.slot);
    }

    fn reclaimAbandoned(c: *Channel) void {
        var release_mask: u32 = 0;
        c.post_mu.lock();
        var pending = c.abandoned_mask;
        while (pending != 0) : (pending &= pending - 1) {
            const slot: u32 = @ctz(pending);
            if (c.takenWord(slot).* == c.exposed_token[slot]) release_mask |= @as(u32, 1) << @intCast(slot);
        }
        c.abandoned_mask &= ~release_mask;
        c.post_mu.unlock();
        while (release_mask != 0) : (release_mask &= release_mask - 1) {
            const slot: u32 = @ctz(release_mask);
            c.unexposeSlot(.{ .addr = 0, .len = 0, .rkey = 0, .slot = slot, .token = c.exposed_token[slot] });
        }
    }

    /// Sender: waits until the peer wrote this exposure's token into its taken word.
    pub fn awaitTaken(c: *Channel, desc: Desc, abort: anytype) enum { taken, failed, aborted } {
        var polls: u64 = 0;
        while (c.takenWord(desc.slot).* != desc.token) : (polls += 1) {
            if (c.isFailed()) return .failed;
            if (polls % 64 == 0 and abort.check()) return .aborted;
            if (polls < 1000) std.atomic.spinLoopHint() else std.Thread.sleep(20 * std.time.ns_per_us);
        }
        return .taken;
    }

    /// Receiver: RDMA-reads [remote_addr, + dest.len) of the peer into `dest`.
    pub fn pull(c: *Channel, dest: []u8, remote_addr: u64, rkey: u32) bool {
        if (dest.len == 0) return true;
        const handle = c.dev.cache.acquire(c.dev, @intFromPtr(dest.ptr), dest.len) orelse return c.pullStaged(dest, remote_addr, rkey);
        defer c.dev.cache.release(c.dev, handle);
        return c.read(@intFromPtr(dest.ptr), @intCast(dest.len), handle.lkey, remote_addr, rkey);
    }

    /// Receiver: `dest` from the exposure `desc` at `offset`, striped over the first NIC and
    /// every rail the sender registered the bytes on (one stripe per NIC, all in flight).
    pub fn pullStriped(c: *Channel, dest: []u8, desc: Desc, offset: u64) bool {
        const usable: u32 = if (c.rail_count == 0) 0 else desc.rail_mask & ((@as(u32, 1) << @intCast(c.rail_count)) - 1);
        const ways: u64 = 1 + @popCount(usable);
        if (ways == 1 or dest.len < rail_mod.stripe_bytes_min) return c.pull(dest, desc.addr + offset, desc.rkey);
        const stripe = std.mem.alignForward(u64, (dest.len + ways - 1) / ways, 4096);
        var handles: [rails_max]?RegCache.Handle = [_]?RegCache.Handle{null} ** rails_max;
        defer for (handles, 0..) |maybe, i| if (maybe) |h| c.rails[i].?.dev.cache.release(c.rails[i].?.dev, h);
        var at: u64 = stripe;
        for (0..c.rail_count) |i| {
            if (usable & (@as(u32, 1) << @intCast(i)) == 0 or at >= dest.len) continue;
            const d = c.rails[i].?.dev;
            const len = @min(stripe, dest.len - at);
            // Not registrable on that NIC: the whole piece goes over the first one.
            handles[i] = d.cache.acquire(d, @intFromPtr(dest.ptr) + at, len) orelse return c.pull(dest, desc.addr + offset, desc.rkey);
            at += len;
        }
        at = stripe;
        var posted = true;
        for (0..c.rail_count) |i| {
            const h = handles[i] orelse continue;
            const len = @min(stripe, dest.len - at);
            posted = posted and c.rails[i].?.postRead(@intFromPtr(dest.ptr) + at, @intCast(len), h.lkey, desc.addr + offset + at, desc.rail_rkeys[i]);
            at += len;
        }
        const first = posted and c.pull(dest[0..@min(stripe, dest.len)], desc.addr + offset, desc.rkey);
        var rails_ok = posted;
        for (c.rails[0..c.rail_count]) |*maybe| {
            const rail = &maybe.*.?;
            if (rail.reads_posted == 0) continue;
            if (rail.awaitReads(&c.failed)) |status| {
                c.failWith("RDMA read over {s} toward rank {d} failed: {s} (status {d})", .{ rail.dev.name(), c.peer, c.dev.api.statusText(status), @intFromEnum(status) });
                rail.reads_posted = 0;
                rails_ok = false;
            }
        }
        if (!posted) c.failWith("could not post a striped RDMA read toward rank {d}", .{c.peer});
        return first and rails_ok;
    }

    /// Receiver: pulls through the registered bounce area (for destinations not worth
    /// registering: stash buffers).
    pub fn pullStaged(c: *Channel, dest: []u8, remote_addr: u64, rkey: u32) bool {
        const bounce = c.bounce.?;
        var offset: usize = 0;
        while (offset < dest.len) {
            const n = @min(bounce.bytes.len, dest.len - offset);
            if (!c.read(@intFromPtr(bounce.bytes.ptr), @intCast(n), bounce.mr.lkey, remote_addr + offset, rkey)) return false;
            @memcpy(dest[offset..][0..n], bounce.bytes[0..n]);
            offset += n;
        }
        return true;
    }

    /// RDMA-reads [remote_addr, + len) of the peer into registered memory (`lkey`; host or
    /// device) and waits for it to land.
    pub fn readRegistered(c: *Channel, local: u64, len: u32, lkey: u32, remote_addr: u64, rkey: u32) bool {
        return c.read(local, len, lkey, remote_addr, rkey);
    }

    fn read(c: *Channel, local: usize, len: u32, lkey: u32, remote_addr: u64, rkey: u32) bool {
        while (c.sq_inflight.load(.acquire) + 2 > c.sq_depth) {
            if (c.isFailed()) return false;
            std.Thread.sleep(20 * std.time.ns_per_us);
        }
        var sge = abi.Sge{ .addr = local, .length = len, .lkey = lkey };
        var wr = abi.SendWr{ .wr_id = wr_kind_read, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_read, .send_flags = abi.send_signaled };
        wr.wr = .{ .rdma = .{ .remote_addr = remote_addr, .rkey = rkey } };
        c.post_mu.lock();
        const ok = !c.failed.load(.acquire) and c.postLocked(&wr);
        if (ok) c.reads_posted += 1;
        const ticket = c.reads_posted;
        c.post_mu.unlock();
        if (!ok) return false;
        var polls: u64 = 0;
        while (c.reads_done.load(.acquire) < ticket) : (polls += 1) {
            if (c.isFailed()) return false;
            if (polls < 1000) std.atomic.spinLoopHint() else std.Thread.sleep(10 * std.time.ns_per_us);
        }
        return true;
    }

    /// Receiver: tells the sender it has taken the message of `desc` (its taken word).
    pub fn markTaken(c: *Channel, desc: Desc) bool {
        if (desc.slot >= rendezvous_slots) return false;
        c.post_mu.lock();
        defer c.post_mu.unlock();
        const source: *u64 = @ptrCast(@alignCast(c.credit.bytes.ptr + 32));
        source.* = desc.token;
        var sge = abi.Sge{ .addr = @intFromPtr(source), .length = 8, .lkey = c.credit.mr.lkey };
        var wr = abi.SendWr{ .wr_id = wr_kind_credit, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_write, .send_flags = abi.send_signaled | abi.send_inline };
        wr.wr = .{ .rdma = .{ .remote_addr = c.remote.?.credit_addr + taken_offset + 8 * desc.slot, .rkey = c.remote.?.credit_rkey } };
        return !c.failed.load(.acquire) and c.postLocked(&wr);
    }

    /// One poll of this channel's CQ (the poller thread, under dev.mu). True when it found work.
    pub fn drain(c: *Channel) bool {
        var wcs: [32]abi.Wc = undefined;
        const n = c.dev.api.pollCq(c.cq, &wcs);
        if (n < 0) {
            c.failWith("completion queue toward rank {d} failed (overrun?)", .{c.peer});
            return false;
        }
        for (wcs[0..@intCast(n)]) |wc| c.complete(wc);
        return n > 0;
    }

    fn complete(c: *Channel, wc: abi.Wc) void {
        if (wc.status != .success) {
            // After the first error the rest are flushes; the first says why.
            if (wc.status != .wr_flush_err or !c.isFailed())
                c.failWith("RDMA toward rank {d} failed: {s} (status {d}, vendor error {d})", .{ c.peer, c.dev.api.statusText(wc.status), @intFromEnum(wc.status), wc.vendor_err });
            return;
        }
        if (wc.opcode == abi.wc_recv_rdma_with_imm) {
            const expected = c.arrived.load(.monotonic);
            if (abi.immDecode(wc.imm_data) != expected) {
                c.failWith("rank {d} wrote ring slot {d}, expected {d}", .{ c.peer, abi.immDecode(wc.imm_data), expected });
                return;
            }
            if (!c.postReceive()) c.failWith("could not repost a receive toward rank {d}", .{c.peer});
            _ = c.arrived.fetchAdd(1, .release);
            std.Thread.Futex.wake(&c.arrived, 1);
            return;
        }
        _ = c.sq_inflight.fetchSub(1, .acq_rel);
        if (wc.wr_id == wr_kind_direct) _ = c.direct_done.fetchAdd(1, .release);
        if (wc.wr_id == wr_kind_read) _ = c.reads_done.fetchAdd(1, .release);
    }
};
