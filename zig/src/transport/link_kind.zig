//! Link kinds: the one table of operations every data-plane link kind implements (NCCL's
//! transport tables, Gloo's `Pair`). TCP (kind_tcp.zig) and shared-memory rings (kind_shm.zig)
//! are two implementations; a new kind is one new file exporting `pub const ops: Ops` (opsOf
//! builds it from the file's pub functions) plus one line in kinds.zig. Nothing above this
//! table (links.zig, net.zig, the algorithms) knows which kind carries a link.
//!
//! ## What a link is
//! Every link starts as a TCP connection: links.zig dials / accepts it, runs the handshake
//! (wire.Hello / wire.Ack: cluster id, token, ranks) and keeps the socket for liveness (a peer
//! that dies closes it) and as the byte stream of the tcp kind. The handshake carries one
//! opaque blob per direction that only the kind reads (an shm ring's name; a verbs QP's number,
//! GID and rkeys). Frames (wire.FrameHeader + payload, one chunk of a message each) then travel
//! over whatever the kind provides. Frames on one link arrive in the order they were sent.
//!
//! ## Life of a link, and who calls each op
//!   start      once per rank (Net.init), on the initializing thread. Returns the kind's
//!              per-rank context (device, counters, caches), or null when the kind is not
//!              usable here (it logs why, once). `stop` undoes it at Net.deinit, after every
//!              link of the kind is destroyed.
//!   preference dialer side, under the data plane's lock (must not block): how much this kind
//!              wants a link to `peer`; 0 = never. The dialer offers the highest non-zero kind
//!              and falls back to the next, tcp (preference 1) last.
//!   offer      dialer side, no lock held: prepares this rank's half (create a ring, a QP) and
//!              writes the blob the acceptor needs into `blob_out`; returns the pending link
//!              state and the blob's length, or null (the next kind is tried).
//!   accept     acceptor side, no lock held, after the Hello was authenticated: builds this
//!              rank's half from the dialer's blob, writes the reply blob; null declines (the
//!              link then runs as tcp: the kind must leave nothing behind).
//!   complete   dialer side, after an Ack that took this kind: finishes from the acceptor's
//!              blob. error.Protocol: the dialer destroys the pending state and the dial fails.
//!   send       op threads; the link layer holds the link's write lock, so calls on one link
//!              never overlap. Sends one frame (header + payload, payload.len <=
//!              chunk_bytes(link)). Blocks while the link has no room, asking abort.check()
//!              at least every ~50 ms; returns once the payload may be reused (copied out or
//!              on the wire). Errors: Closed (the peer is gone), Aborted (abort.check() said
//!              stop and the link is still usable: nothing of the frame was sent), Broken
//!              (stopped mid-frame: the link layer closes the link).
//!   receive    the link's own thread, no lock held, until the link closes: reads frames,
//!              validates each header (header.validate(peer, chunk_bytes)) and hands it to the
//!              Receiver (below). Returns .closed when the link closes or rx.stopped() turns
//!              true, .protocol on anything malformed. It must notice rx.stopped() within
//!              ~100 ms, and a dead peer within ~100 ms of its socket closing (e.g.
//!              sys.peerHungUp(fd) when idle).
//!   wake       any thread, under the data plane's lock; must not block: the link is closing
//!              (the socket was already shut down), wake senders and the receiver sleeping on
//!              kind-private resources (futexes, completion channels).
//!   destroy    once, after receive returned and no sender holds the link (or for a pending
//!              offer/accept that never became a link): frees everything the kind made. The
//!              link layer closes the socket itself.
//!
//! ## Buffers
//! `send`'s header and payload belong to the caller and are valid only during the call.
//! Receive targets (Receiver.route) belong to the endpoint layer: a `.direct` destination is a
//! slice of the op's posted buffer, valid until finishDirect; a `.stash` buffer is owned by the
//! kind until finishStash (filled) or dropStash (not). Kind state is allocated with env.alloc.
const std = @import("std");
const sys = @import("../sys.zig");
const wire = @import("wire.zig");

pub const blob_bytes_max = wire.link_blob_bytes_max;

/// What a kind knows of its own rank (Net options, read once at Net.init).
pub const Env = struct {
    alloc: std.mem.Allocator,
    rank: u32,
    world_size_max: u32,
    host_id: u64,
    /// The kind $MOONRING_TRANSPORT forces (its name), or null for auto.
    forced: ?[]const u8,
    /// Names of this rank's shared resources start with it (Net sweeps leftovers at start).
    name_prefix: []const u8,
    tcp_chunk_bytes: u32,
    shm_slot_count: u32,
    shm_slot_bytes: u32,

    pub fn isForced(env: *const Env, name: []const u8) bool {
        const forced = env.forced orelse return false;
        return std.mem.eql(u8, forced, name);
    }
};

/// The other end of a link, as the handshake and the control plane described it.
pub const PeerInfo = struct {
    rank: u32,
    /// 0 when unknown.
    host_id: u64,
};

/// A half-made link: the kind's per-link state and the length of the blob it wrote.
pub const Pending = struct {
    link: *anyopaque,
    blob_len: usize,
};

pub const SendError = error{ Closed, Aborted, Broken };
pub const CompleteError = error{Protocol};
pub const RxOutcome = enum { closed, protocol };

/// Asked by a blocked send whether to give up (op failed, canceled, past its deadline, link
/// closing, rank stopping).
pub const Abort = struct {
    context: *const anyopaque,
    check_fn: *const fn (context: *const anyopaque) bool,

    pub fn check(self: Abort) bool {
        return self.check_fn(self.context);
    }
};

/// Where a received frame's payload goes (Receiver.route).
pub const Target = union(enum) {
    /// Straight into the posted receive: fill `dest`, then finishDirect.
    direct: Direct,
    /// Into this buffer (owned by the kind until finishStash / dropStash).
    stash: []u8,
    /// Nobody wants it: skip the payload.
    discard,
};

pub const Direct = struct {
    dest: []u8,
    /// The endpoint layer's bookkeeping; kinds pass it back untouched.
    endpoint: *anyopaque,
    request: *anyopaque,
};

/// The endpoint layer as a link's receive loop sees it. One per link, valid during receive.
/// Kinds whose payload sits in memory (shm slots, verbs bounce buffers) call `frame`; kinds
/// that stream it (tcp) call route, then read into the target, then finish / drop.
pub const Receiver = struct {
    context: *anyopaque,
    vtable: *const VTable,
    /// The global rank the handshake named for this link.
    peer: u32,
    /// Set when the link closes or the rank stops: receive returns then.
    closing: *const std.atomic.Value(bool),
    stopping: *const std.atomic.Value(bool),

    pub const VTable = struct {
        frame: *const fn (rx: *const Receiver, header: *const wire.FrameHeader, payload: []const u8) void,
        route: *const fn (rx: *const Receiver, header: *const wire.FrameHeader) Target,
        finish_direct: *const fn (rx: *const Receiver, direct: Direct, written: usize, complete: bool) void,
        finish_stash: *const fn (rx: *const Receiver, header: *const wire.FrameHeader, buf: []u8) void,
        drop_stash: *const fn (rx: *const Receiver, buf: []u8) void,
        /// The op behind a direct target gave up on it: stop writing into dest.
        abandoned: *const fn (rx: *const Receiver, direct: Direct) bool,
    };

    /// A validated frame whose payload is in memory: copied (or reduced) where it belongs.
    /// May block while the stash is full (backpressure).
    pub fn frame(rx: *const Receiver, header: *const wire.FrameHeader, payload: []const u8) void {
        std.debug.assert(payload.len == header.chunk_len);
        rx.vtable.frame(rx, header, payload);
    }

    /// Where a streamed frame's payload goes. A `.direct` target never asks to reduce (reducing
    /// receives take the stash when the payload is streamed). May block while the stash is full.
    pub fn route(rx: *const Receiver, header: *const wire.FrameHeader) Target {
        return rx.vtable.route(rx, header);
    }

    pub fn finishDirect(rx: *const Receiver, direct: Direct, written: usize, complete: bool) void {
        std.debug.assert(written <= direct.dest.len);
        rx.vtable.finish_direct(rx, direct, written, complete);
    }

    pub fn finishStash(rx: *const Receiver, header: *const wire.FrameHeader, buf: []u8) void {
        std.debug.assert(buf.len == header.chunk_len);
        rx.vtable.finish_stash(rx, header, buf);
    }

    pub fn dropStash(rx: *const Receiver, buf: []u8) void {
        rx.vtable.drop_stash(rx, buf);
    }

    pub fn abandoned(rx: *const Receiver, direct: Direct) bool {
        return rx.vtable.abandoned(rx, direct);
    }

    pub fn stopped(rx: *const Receiver) bool {
        return rx.closing.load(.acquire) or rx.stopping.load(.acquire);
    }
};

/// The table. Every function is required; see the top of this file for each one's contract.
pub const Ops = struct {
    /// Also the $MOONRING_TRANSPORT value that forces this kind.
    name: [:0]const u8,
    /// On the wire (Hello.kind / Ack.kind); unique (kinds.zig checks).
    id: u16,
    start: *const fn (env: *const Env) ?*anyopaque,
    stop: *const fn (kind: *anyopaque) void,
    preference: *const fn (kind: *anyopaque, env: *const Env, peer: PeerInfo) u8,
    offer: *const fn (kind: *anyopaque, env: *const Env, peer: PeerInfo, blob_out: []u8) ?Pending,
    accept: *const fn (kind: *anyopaque, env: *const Env, peer: PeerInfo, blob_in: []const u8, blob_out: []u8) ?Pending,
    complete: *const fn (kind: *anyopaque, link: *anyopaque, peer: PeerInfo, blob_in: []const u8) CompleteError!void,
    chunk_bytes: *const fn (link: *anyopaque) u32,
    send: *const fn (link: *anyopaque, fd: sys.Fd, header: *const wire.FrameHeader, payload: []const u8, abort: Abort) SendError!void,
    receive: *const fn (link: *anyopaque, fd: sys.Fd, rx: *const Receiver) RxOutcome,
    wake: *const fn (link: *anyopaque) void,
    destroy: *const fn (kind: *anyopaque, link: *anyopaque) void,
    /// Optional: zero-copy for large messages (verbs). Null: every message goes as frames.
    rendezvous: ?*const Rendezvous = null,
};

/// Zero-copy for large messages, for kinds that can reach the peer's memory (RDMA). The
/// sender exposes its message and sends one descriptor frame (header.flags =
/// wire.flag_rendezvous, payload = the kind's descriptor, msg_len = the message's length);
/// the receiving side of the kind (its `receive` loop) takes the bytes itself (routing each
/// chunk like a streamed kind: into the posted receive, else the stash) and tells the sender.
pub const Rendezvous = struct {
    /// Messages of at least this many bytes go by rendezvous on this link.
    min_bytes: *const fn (link: *anyopaque) u64,
    /// Sender (op thread, link write lock held): makes `bytes` readable by the peer, writes
    /// the descriptor (<= wire.rendezvous_desc_bytes_max) into `desc_out` and returns its
    /// length; null: send frames instead.
    expose: *const fn (link: *anyopaque, bytes: []const u8, desc_out: []u8) ?usize,
    /// Sender, after the descriptor frame went out (write lock released): blocks until the
    /// peer has taken every byte (then releases what expose took), the link fails (Closed), or
    /// abort says stop (Aborted: the link stays usable; the kind releases the exposure once the
    /// peer has taken it, since the peer may still be reading).
    await_taken: *const fn (link: *anyopaque, desc: []const u8, abort: Abort) SendError!void,
    /// Sender: the descriptor frame could not be sent; releases what expose took.
    withdraw: *const fn (link: *anyopaque, desc: []const u8) void,
};

/// The table of a kind file whose pub functions carry the ops' names (start, stop, preference,
/// offer, accept, complete, chunkBytes, send, receive, wake, destroy; `rendezvous`, a
/// Rendezvous, when it has one): `pub const ops = link_kind.opsOf("name", .id, @This());`.
pub fn opsOf(comptime name: [:0]const u8, comptime id: wire.LinkKind, comptime Kind: type) Ops {
    return .{
        .name = name,
        .id = @intFromEnum(id),
        .start = Kind.start,
        .stop = Kind.stop,
        .preference = Kind.preference,
        .offer = Kind.offer,
        .accept = Kind.accept,
        .complete = Kind.complete,
        .chunk_bytes = Kind.chunkBytes,
        .send = Kind.send,
        .receive = Kind.receive,
        .wake = Kind.wake,
        .destroy = Kind.destroy,
        .rendezvous = if (@hasDecl(Kind, "rendezvous")) &Kind.rendezvous else null,
    };
}

/// The preference of the base kind (tcp): every other kind that wants a peer returns more.
pub const preference_base: u8 = 1;
