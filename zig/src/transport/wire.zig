//! What goes on a data-plane link: the handshake that admits a connection and the frame header
//! that precedes every chunk of a message (TCP stream or shm ring slot). Everything received is
//! validated before use; a bad handshake or frame closes the link.
const std = @import("std");

/// 2: the handshake carries an opaque per-kind blob (was: an shm segment name).
pub const protocol_version: u16 = 2;
pub const hello_magic: u32 = 0x4d52_4831; // "MRH1"
pub const ack_magic: u32 = 0x4d52_4131; // "MRA1"
pub const frame_magic: u32 = 0x4d52_4631; // "MRF1"

pub const cluster_id_bytes_max = 256;
pub const token_bytes_max = 256;
/// A link kind's handshake blob (link_kind.zig): an shm ring name, a verbs QP description.
pub const link_blob_bytes_max = 512;
/// Largest payload of one frame: big messages go as many chunks.
pub const chunk_bytes_max: u32 = 1 << 20;
/// Largest message (sanity bound on a header field): 1 TiB.
pub const message_bytes_max: u64 = 1 << 40;

/// Link kind ids on the wire (each kind's `ops.id`; kinds.zig lists them). Non-exhaustive: an
/// id this rank does not know is declined to tcp.
pub const LinkKind = enum(u16) { tcp = 0, shm = 1, verbs = 2, _ };

/// Dialer -> acceptor, followed by cluster id, token and the offered kind's blob.
pub const Hello = extern struct {
    magic: u32 = hello_magic,
    version: u16 = protocol_version,
    kind: u16, // LinkKind the dialer offers
    src_rank: u32,
    dst_rank: u32,
    world_size_max: u32,
    cluster_id_len: u16,
    token_len: u16,
    blob_len: u16,
    reserved: u16 = 0,
    reserved2: u32 = 0,
    host_id: u64,
};

pub const AckStatus = enum(u32) {
    ok = 0,
    bad_version = 1,
    wrong_rank = 2,
    bad_cluster = 3,
    bad_token = 4,
    shutting_down = 5,
    _,
};

/// Acceptor -> dialer, followed by the taken kind's reply blob.
pub const Ack = extern struct {
    magic: u32 = ack_magic,
    status: AckStatus,
    rank: u32,
    kind: u16, // the LinkKind the acceptor took: the offered one, or tcp
    blob_len: u16,
};

/// FrameHeader.flags: the frame describes a message the receiver takes by itself
/// (link_kind.Rendezvous); msg_len is the message's length, the payload the kind's descriptor.
pub const flag_rendezvous: u16 = 1;
pub const rendezvous_desc_bytes_max = 64;

/// Precedes every chunk. `check` is a hash of the other fields: garbage is caught at once.
pub const FrameHeader = extern struct {
    magic: u32 = frame_magic,
    src_rank: u16,
    flags: u16 = 0,
    op_id: u64,
    seq: u32,
    chunk_len: u32,
    msg_len: u64,
    offset: u64,
    check: u32 = 0,
    reserved: u32 = 0,

    pub fn seal(self: *FrameHeader) void {
        self.check = self.computeCheck();
    }

    fn computeCheck(self: FrameHeader) u32 {
        var copy = self;
        copy.check = 0;
        return @truncate(std.hash.Wyhash.hash(0x4d52, std.mem.asBytes(&copy)));
    }

    pub const Invalid = error{Protocol};

    /// Validates a received header from a link whose handshake named `src_rank`.
    pub fn validate(self: FrameHeader, src_rank: u32, chunk_limit: u32) Invalid!void {
        if (self.magic != frame_magic) return error.Protocol;
        if (self.check != self.computeCheck()) return error.Protocol;
        if (self.src_rank != src_rank or self.reserved != 0) return error.Protocol;
        if (self.flags == flag_rendezvous) {
            // A rendezvous descriptor (link_kind.Rendezvous): the payload is the descriptor.
            if (self.chunk_len == 0 or self.chunk_len > rendezvous_desc_bytes_max or self.offset != 0) return error.Protocol;
            if (self.msg_len == 0 or self.msg_len > message_bytes_max) return error.Protocol;
            return;
        }
        if (self.flags != 0) return error.Protocol;
        if (self.chunk_len > chunk_limit or self.msg_len > message_bytes_max) return error.Protocol;
        if (self.offset > self.msg_len or self.chunk_len > self.msg_len - self.offset) return error.Protocol;
        if (self.chunk_len == 0 and self.msg_len != 0) return error.Protocol;
    }
};

comptime {
    std.debug.assert(@sizeOf(Hello) == 40);
    std.debug.assert(@sizeOf(Ack) == 16);
    std.debug.assert(@sizeOf(FrameHeader) == 48);
    std.debug.assert(chunk_bytes_max % 4096 == 0);
    std.debug.assert(link_blob_bytes_max <= std.math.maxInt(u16));
}

test "wire: frame header validation" {
    var h = FrameHeader{ .src_rank = 3, .op_id = 7, .seq = 1, .chunk_len = 10, .msg_len = 30, .offset = 20 };
    h.seal();
    try h.validate(3, chunk_bytes_max);
    try std.testing.expectError(error.Protocol, h.validate(2, chunk_bytes_max));
    var bad = h;
    bad.offset = 21;
    try std.testing.expectError(error.Protocol, bad.validate(3, chunk_bytes_max));
    bad.seal();
    try std.testing.expectError(error.Protocol, bad.validate(3, chunk_bytes_max));
    var garbage: FrameHeader = @bitCast([_]u8{0x41} ** 48);
    try std.testing.expectError(error.Protocol, garbage.validate(3, chunk_bytes_max));
    garbage.magic = frame_magic;
    try std.testing.expectError(error.Protocol, garbage.validate(3, chunk_bytes_max));
}
