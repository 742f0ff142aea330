//! GPU tensors between hosts over RDMA verbs without host staging: each rank registers its
//! device send and recv buffers with its verbs device (transport/verbs_gpu.zig: dma-buf, else
//! nvidia-peermem) and the ranks RDMA-read and RDMA-write each other's device memory
//! (GPUDirect RDMA); reductions run on the local GPU with the reduction kernels. Control
//! messages (hello, final status) go over the op's `Comm`.
//!
//! Protocol of one op, every rank of the group (group ranks):
//!  1. hello: each rank sends every peer a `Hello`: its send and recv buffers' device addresses
//!     and rkeys on the verbs device of its link to that peer, or "can't" (a link that is not
//!     verbs, registration refused: verbs_gpu.zig says why once). Any "can't" -> every rank
//!     returns .fallback and the engine stages through host memory as before.
//!  2. this rank's part (below), RDMA completions awaited: an RDMA write's completion means
//!     the bytes are in the peer's memory (RC), a read's that they are in ours.
//!  3. final status exchange: once it passes every write into this rank's buffers has landed
//!     and no peer reads them any more. A rank that failed its part fails the op everywhere.
//!
//! | kind      | rank i's part (S_j / R_j: rank j's send / recv)                                  |
//! |-----------|-----------------------------------------------------------------------------------|
//! | allreduce | block i: acc = S_0[b_i] op ... op S_n-1[b_i] (peer blocks RDMA-read into a        |
//! |           | registered scratch, group order, avg scaled), then acc RDMA-written into every R_j[b_i] |
//! | allgather | S_i RDMA-written into every R_j[block i]                                           |
//! | broadcast | non-root: S_root RDMA-read into R_i                                                |
//!
//! Other kinds (reduce, reduce_scatter, gather, scatter, alltoall, p2p) use host staging.
const std = @import("std");
const transport = @import("../transport/transport.zig");
const netmod = @import("../transport/net.zig");
const verbs = @import("../transport/verbs.zig");
const verbs_gpu = @import("../transport/verbs_gpu.zig");
const op = @import("../op.zig");
const sys = @import("../sys.zig");
const driver = @import("../cuda/driver.zig");
const staging = @import("../cuda/staging.zig");
const cuda_direct = @import("cuda_direct.zig");

pub const Error = transport.Error || driver.Error;
pub const Outcome = cuda_direct.Outcome;

/// Largest group (control messages and handles are kept per peer on the stack).
pub const group_size_max = 8;
/// Allreduce blocks start at multiples of this many bytes.
const block_align_bytes = 256;
/// One RDMA read or write moves at most this much (larger ones go in pieces).
const piece_bytes_max: u64 = verbs.pull_bytes_max;
const hello_magic: u32 = 0x4D52_4744; // "MRGD"
const gpu_page_bytes: u64 = 2 << 20;
const status_magic: u32 = 0x4D52_4753; // "MRGS"

/// The engine's device op (cuda_direct.Op: kind, dtype, redop, group root, count, global group
/// ranks, device pointers, same_host); the alltoall counts and CUDA knobs are not read here.
pub const Op = cuda_direct.Op;

/// Whether the op takes part at all: the same answer on every rank (agreed kind, count and
/// group; host placement; MOONRING_TRANSPORT, set alike on every rank).
pub fn applies(o: Op) bool {
    if (o.device < 0 or o.group.len < 2 or o.group.len > group_size_max or o.count == 0) return false;
    const kind_ok = switch (o.kind) {
        .allreduce, .allgather, .broadcast => true,
        else => false,
    };
    if (!kind_ok) return false;
    const forced = if (sys.getenv("MOONRING_TRANSPORT")) |t| std.mem.eql(u8, t, "verbs") else false;
    if (sys.getenv("MOONRING_VERBS_GPU")) |v| if (v.len > 0 and v[0] == '0') return false;
    return !o.same_host or forced;
}

const Hello = extern struct {
    magic: u32 = hello_magic,
    ok: u32 = 0,
    send_addr: u64 = 0,
    recv_addr: u64 = 0,
    send_rkey: u32 = 0,
    recv_rkey: u32 = 0,
};

const StatusMsg = extern struct {
    magic: u32 = status_magic,
    ok: u32 = 1,
    reserved: u64 = 0,
};

/// What this rank holds toward each peer for the op: the link, its registrations.
const Peers = struct {
    net: *netmod.Net,
    held: [group_size_max]?netmod.VerbsHold = [_]?netmod.VerbsHold{null} ** group_size_max,
    send: [group_size_max]?verbs_gpu.Handle = [_]?verbs_gpu.Handle{null} ** group_size_max,
    recv: [group_size_max]?verbs_gpu.Handle = [_]?verbs_gpu.Handle{null} ** group_size_max,
    scratch: [group_size_max]?verbs_gpu.Handle = [_]?verbs_gpu.Handle{null} ** group_size_max,

    fn channel(p: *const Peers, j: usize) *verbs.Channel {
        return p.held[j].?.channel;
    }

    fn releaseAll(p: *Peers) void {
        for (0..group_size_max) |j| {
            const hold = p.held[j] orelse continue;
            const cache = &hold.channel.dev.gpu_cache;
            if (p.send[j]) |h| cache.release(h);
            if (p.recv[j]) |h| cache.release(h);
            if (p.scratch[j]) |h| cache.release(h);
            p.net.releaseVerbs(hold);
            p.held[j] = null;
        }
    }
};

fn bufferBytes(o: Op, me: u32) struct { u64, u64 } {
    return op.bufferBytes(o.kind, o.dtype.bytes(), o.count, o.group.len, o.root == me, &.{}, &.{});
}

/// Runs the op over GPUDirect RDMA, or returns .fallback (on every rank alike) for staging.
pub fn run(net: *netmod.Net, ep: *netmod.Endpoint, o: Op) Error!Outcome {
    if (!applies(o)) return .fallback;
    const comm = ep.comm();
    const n: u32 = comm.size;
    const me: u32 = comm.rank;
    std.debug.assert(n == o.group.len and me < n);
    const send_bytes, const recv_bytes = bufferBytes(o, me);
    const dev = try staging.device(o.device);
    if (o.send != 0 and send_bytes > 0) try dev.checkRange(o.send, send_bytes, "verbs direct op (send)");
    if (o.recv != 0 and recv_bytes > 0) try dev.checkRange(o.recv, recv_bytes, "verbs direct op (recv)");

    var scratch: u64 = 0;
    const block_bytes = allreduceBlockBytes(o);
    // Whole GPU pages: a dma-buf covers whole pages, so a small allocation sharing its page
    // with others might not export.
    const scratch_bytes = std.mem.alignForward(u64, 2 * block_bytes, gpu_page_bytes);
    if (o.kind == .allreduce) scratch = try dev.alloc(scratch_bytes);
    defer if (scratch != 0) dev.free(scratch) catch {};

    var peers = Peers{ .net = net };
    defer peers.releaseAll();
    var mine: [group_size_max]Hello = undefined;
    var theirs: [group_size_max]Hello = undefined;
    for (0..n) |j| {
        mine[j] = .{};
        if (j == me) continue;
        mine[j] = offer(&peers, ep, o, j, send_bytes, recv_bytes, scratch, scratch_bytes);
    }
    mine[me].ok = 1;
    theirs[me] = mine[me];
    try cuda_direct.exchangeMessages(Hello, comm, mine[0..n], theirs[0..n]);
    for (theirs[0..n], mine[0..n]) |h, m| {
        if (h.magic != hello_magic) return error.Protocol;
        if (h.ok == 0 or m.ok == 0) return .fallback;
    }

    var part_error: ?anyerror = null;
    part(&peers, o, me, &theirs, scratch, block_bytes) catch |err| {
        part_error = err;
    };
    var done_mine: [group_size_max]StatusMsg = undefined;
    var done: [group_size_max]StatusMsg = undefined;
    for (done_mine[0..n]) |*d| d.* = .{ .ok = @intFromBool(part_error == null) };
    done[me] = done_mine[me];
    try cuda_direct.exchangeMessages(StatusMsg, comm, done_mine[0..n], done[0..n]);
    if (part_error) |err| return driver.fail(error.Cuda, "rank {d}: GPUDirect RDMA {s}: {s}", .{ o.group[me], @tagName(o.kind), @errorName(err) });
    for (done[0..n], 0..) |d, j| {
        if (d.magic != status_magic) return error.Protocol;
        if (d.ok == 0) return driver.fail(error.Cuda, "rank {d} failed its part of the GPUDirect RDMA {s} (see its log)", .{ o.group[j], @tagName(o.kind) });
    }
    return .done;
}

/// This rank's hello to group rank j: its buffers registered on the verbs device of the link
/// to j, or ok = 0.
fn offer(peers: *Peers, ep: *netmod.Endpoint, o: Op, j: usize, send_bytes: u64, recv_bytes: u64, scratch: u64, scratch_bytes: u64) Hello {
    const hold = peers.net.acquireVerbs(ep, o.group[j]) orelse return .{};
    peers.held[j] = hold;
    const dev = hold.channel.dev;
    var why: verbs.Reason = .{};
    var hello = Hello{ .ok = 1 };
    if (o.send != 0 and send_bytes > 0) {
        peers.send[j] = dev.gpu_cache.acquire(dev, o.device, o.send, send_bytes, &why) orelse return .{};
        hello.send_addr = o.send;
        hello.send_rkey = peers.send[j].?.rkey;
    }
    if (o.recv != 0 and recv_bytes > 0) {
        peers.recv[j] = dev.gpu_cache.acquire(dev, o.device, o.recv, recv_bytes, &why) orelse return .{};
        hello.recv_addr = o.recv;
        hello.recv_rkey = peers.recv[j].?.rkey;
    }
    if (scratch != 0) peers.scratch[j] = dev.gpu_cache.acquire(dev, o.device, scratch, scratch_bytes, &why) orelse return .{};
    return hello;
}

fn allreduceBlockBytes(o: Op) u64 {
    const es = o.dtype.bytes();
    const per_rank = (o.count + o.group.len - 1) / o.group.len;
    return std.mem.alignForward(u64, @max(per_rank * es, es), block_align_bytes);
}

fn part(peers: *Peers, o: Op, me: u32, theirs: *const [group_size_max]Hello, scratch: u64, block_bytes: u64) !void {
    const n: u32 = @intCast(o.group.len);
    const es = o.dtype.bytes();
    switch (o.kind) {
        .allgather => {
            const bytes = o.count * es;
            for (1..n) |k| {
                const j = (me + k) % n;
                try write(peers, j, o.send, peers.send[j].?.lkey, theirs[j].recv_addr + me * bytes, theirs[j].recv_rkey, bytes);
            }
            if (o.send != o.recv + me * bytes) try (try staging.device(o.device)).copyDeviceToDevice(o.recv + me * bytes, o.send, bytes);
        },
        .broadcast => {
            const bytes = o.count * es;
            if (me != o.root) {
                try read(peers, o.root, o.recv, peers.recv[o.root].?.lkey, theirs[o.root].send_addr, theirs[o.root].send_rkey, bytes);
            } else if (o.recv != 0 and o.send != 0 and o.recv != o.send) {
                try (try staging.device(o.device)).copyDeviceToDevice(o.recv, o.send, bytes);
            }
        },
        .allreduce => try allreducePart(peers, o, me, theirs, scratch, block_bytes),
        else => unreachable, // applies()
    }
}

/// Block `me` of the count: accumulated in scratch[0, block) in group order from every rank's
/// send block (peers' read into scratch[block, 2 block)), then written into every recv block.
fn allreducePart(peers: *Peers, o: Op, me: u32, theirs: *const [group_size_max]Hello, scratch: u64, block_bytes: u64) !void {
    const n: u32 = @intCast(o.group.len);
    const es = o.dtype.bytes();
    const offset = me * block_bytes;
    const total = o.count * es;
    if (offset >= total) return; // no elements in this rank's block
    const bytes = @min(block_bytes, total - offset);
    const count = bytes / es;
    const dev = try staging.device(o.device);
    const acc = scratch;
    const tmp = scratch + block_bytes;
    for (0..n) |j| {
        const src: u64 = if (j == me) o.send + offset else blk: {
            const into = if (j == 0) acc else tmp;
            try read(peers, j, into, peers.scratch[j].?.lkey, theirs[j].send_addr + offset, theirs[j].send_rkey, bytes);
            break :blk into;
        };
        if (j == 0) {
            if (src != acc) try dev.copyDeviceToDevice(acc, src, bytes);
        } else {
            try staging.reduce(o.device, o.redop, o.dtype, acc, src, count);
        }
    }
    if (o.redop == .avg) try staging.finalizeAvg(o.device, o.dtype, acc, count, n);
    for (1..n) |k| {
        const j = (me + k) % n;
        try write(peers, j, acc, peers.scratch[j].?.lkey, theirs[j].recv_addr + offset, theirs[j].recv_rkey, bytes);
    }
    try dev.copyDeviceToDevice(o.recv + offset, acc, bytes);
}

const NoAbort = struct {
    pub fn check(_: NoAbort) bool {
        return false;
    }
};

fn write(peers: *Peers, j: usize, local: u64, lkey: u32, remote: u64, rkey: u32, bytes: u64) !void {
    const c = peers.channel(j);
    var offset: u64 = 0;
    while (offset < bytes) {
        const len = @min(piece_bytes_max, bytes - offset);
        if (!c.writeRegistered(local + offset, len, lkey, remote + offset, rkey, NoAbort{})) return error.PeerFailed;
        offset += len;
    }
    _ = verbs_gpu.direct_bytes.fetchAdd(bytes, .monotonic);
}

fn read(peers: *Peers, j: usize, local: u64, lkey: u32, remote: u64, rkey: u32, bytes: u64) !void {
    const c = peers.channel(j);
    var offset: u64 = 0;
    while (offset < bytes) {
        const len = @min(piece_bytes_max, bytes - offset);
        if (!c.readRegistered(local + offset, @intCast(len), lkey, remote + offset, rkey)) return error.PeerFailed;
        offset += len;
    }
    _ = verbs_gpu.direct_bytes.fetchAdd(bytes, .monotonic);
}
