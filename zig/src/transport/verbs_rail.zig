//! Striping over several NICs. A link's channel (verbs.zig) lives on the first verbs device;
//! with more active devices (MOONRING_IB_HCA admits several, NCCL-style) the channel also has
//! one "rail" per further device: one more RC queue pair toward the same peer, on that NIC,
//! connected to the peer's rail on its NIC of the same rank in its list. Small messages (the
//! eager ring, credits, control words) stay on the first NIC; a large rendezvous message is
//! RDMA-read in stripes, one per NIC, all in flight at once (`Channel.pullStriped`).
//!
//! Rails carry only this side's RDMA reads, so their completion queues hold nothing else and
//! the reading thread polls them itself (no poller). A rail's error completion (its NIC or
//! path failed, the peer died) fails the whole channel: the link closes and the ops on it end
//! with EPEER naming the peer, as for any verbs failure; the next link to that peer is made
//! anew over whichever NICs are up then.
const std = @import("std");
const abi = @import("../verbs/abi.zig");
const verbs = @import("verbs.zig");
const Device = verbs.Device;
const Reason = verbs.Reason;

/// NICs besides the first that one link stripes over.
pub const rails_max = 3;
/// Rendezvous pieces below this go over the first NIC alone (messages are at least 4 ring
/// slots, 1 MiB by default, read in pieces of one slot first: 256 KiB stripes twice).
pub const stripe_bytes_min: u64 = 256 << 10;
/// Reads one rail has in flight (one per stripe).
const rail_reads_max = 4;
const rail_wait_spins = 1000;

comptime {
    std.debug.assert(rails_max >= 1 and rails_max <= 8);
}

/// What the peer needs to reach one rail (in the handshake blob's tail).
pub const RailInfo = extern struct {
    qpn: u32,
    lid: u16,
    link_layer: u8,
    mtu: u8,
    gid: [16]u8,
};

/// The verbs blob's tail: the rails this side made (the peer connects min(mine, its) of them).
pub const Tail = extern struct {
    magic: u32 = tail_magic,
    count: u32,
    rails: [rails_max]RailInfo,

    pub const tail_magic: u32 = 0x4d52_5652; // "MRVR"

    pub fn valid(t: *const Tail) bool {
        return t.magic == tail_magic and t.count <= rails_max;
    }
};

comptime {
    std.debug.assert(@sizeOf(RailInfo) == 24);
    std.debug.assert(@sizeOf(verbs.Blob) + @sizeOf(Tail) <= @import("wire.zig").link_blob_bytes_max);
}

pub const Rail = struct {
    dev: *Device,
    cq: *abi.Cq,
    qp: *abi.Qp,
    reads_posted: u32 = 0,

    /// A QP on `dev` in INIT.
    pub fn create(dev: *Device, why: *Reason) error{NoDevice}!Rail {
        const cq = dev.api.create_cq(dev.context, rail_reads_max + 2, null, null, 0) orelse return fail(why, "ibv_create_cq failed on {s}", .{dev.name()});
        errdefer _ = dev.api.destroy_cq(cq);
        var init_attr = abi.QpInitAttr{ .send_cq = cq, .recv_cq = cq, .cap = .{ .max_send_wr = rail_reads_max, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1, .max_inline_data = 0 }, .sq_sig_all = 1 };
        const qp = dev.api.create_qp(dev.pd, &init_attr) orelse return fail(why, "ibv_create_qp failed on {s}", .{dev.name()});
        errdefer _ = dev.api.destroy_qp(qp);
        var attr = abi.QpAttr{ .qp_state = .init, .port_num = dev.port, .qp_access_flags = @intCast(abi.access_local_write | abi.access_remote_write | abi.access_remote_read) };
        if (dev.api.modify_qp(qp, &attr, abi.qp_state | abi.qp_pkey_index | abi.qp_port | abi.qp_access_flags) != 0)
            return fail(why, "rail QP to INIT failed on {s}", .{dev.name()});
        return .{ .dev = dev, .cq = cq, .qp = qp };
    }

    fn fail(why: *Reason, comptime fmt: []const u8, args: anytype) error{NoDevice} {
        why.set(fmt, args);
        return error.NoDevice;
    }

    pub fn info(r: *const Rail) RailInfo {
        return .{ .qpn = r.qp.qp_num, .lid = r.dev.lid, .link_layer = r.dev.link_layer, .mtu = @intCast(r.dev.mtu), .gid = r.dev.gid.raw };
    }

    pub fn connect(r: *Rail, remote: RailInfo, peer: u32, why: *Reason) error{NoDevice}!void {
        if (remote.qpn == 0 or remote.link_layer != r.dev.link_layer) return fail(why, "rank {d} sent a bad rail", .{peer});
        try verbs.toRts(r.dev, r.qp, .{ .qpn = remote.qpn, .lid = remote.lid, .mtu = remote.mtu, .gid = remote.gid }, peer, why);
    }

    pub fn destroy(r: *Rail) void {
        var attr = abi.QpAttr{ .qp_state = .err };
        _ = r.dev.api.modify_qp(r.qp, &attr, abi.qp_state);
        _ = r.dev.api.destroy_qp(r.qp);
        _ = r.dev.api.destroy_cq(r.cq);
    }

    /// Posts one RDMA read of [remote_addr, + len) into registered `local` (lkey on this NIC).
    pub fn postRead(r: *Rail, local: u64, len: u32, lkey: u32, remote_addr: u64, rkey: u32) bool {
        std.debug.assert(r.reads_posted < rail_reads_max);
        var sge = abi.Sge{ .addr = local, .length = len, .lkey = lkey };
        var wr = abi.SendWr{ .wr_id = 1, .sg_list = @ptrCast(&sge), .num_sge = 1, .opcode = abi.wr_rdma_read, .send_flags = abi.send_signaled };
        wr.wr = .{ .rdma = .{ .remote_addr = remote_addr, .rkey = rkey } };
        if (r.dev.api.postSend(r.qp, &wr) != 0) return false;
        r.reads_posted += 1;
        _ = r.dev.bytes.fetchAdd(len, .monotonic);
        return true;
    }

    /// Waits for every posted read; null when all landed, else the failed completion's status.
    pub fn awaitReads(r: *Rail, channel_failed: *const std.atomic.Value(bool)) ?abi.WcStatus {
        var polls: u64 = 0;
        while (r.reads_posted > 0) : (polls += 1) {
            var wcs: [rail_reads_max]abi.Wc = undefined;
            const n = r.dev.api.pollCq(r.cq, &wcs);
            if (n < 0) return .general_err;
            for (wcs[0..@intCast(n)]) |wc| {
                r.reads_posted -= 1;
                if (wc.status != .success) return wc.status;
            }
            if (n > 0) continue;
            if (channel_failed.load(.acquire)) return .wr_flush_err;
            if (polls < rail_wait_spins) std.atomic.spinLoopHint() else std.Thread.sleep(10 * std.time.ns_per_us);
        }
        return null;
    }
};
