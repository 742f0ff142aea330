//! The interface between collective algorithms and transports. An algorithm sees one op's
//! group through a `Comm`: ranks are group ranks (0..size), messages are matched per
//! (op, peer, direction) in posting order, and a message's length is known to both sides.
//! Transports (tcp.zig, shm.zig, mem.zig for tests) know nothing of collectives.
const std = @import("std");

pub const Error = error{
    /// The peer died, closed its link or was marked down; `Comm.failed_peer` names it.
    PeerFailed,
    Timeout,
    Canceled,
    /// A frame failed validation.
    Protocol,
    OutOfMemory,
};

pub const Request = struct { index: u32 };

/// a receive that reduces as it lands: dst[i] = mine[i] op incoming[i].
pub const ReduceSpec = struct {
    mine: []const u8,
    dtype: u32,
    redop: u32,
    apply: *const fn (dtype: u32, redop: u32, dst: []u8, a: []const u8, b: []const u8) void,
};

/// Requests one op may have outstanding at once (TigerBeetle: a limit on every queue).
pub const requests_in_flight_max = 64;

pub const Comm = struct {
    context: *anyopaque,
    vtable: *const VTable,
    /// This process's rank within the op's group, and the group's size.
    rank: u32,
    size: u32,

    pub const VTable = struct {
        /// Starts sending `bytes` to group rank `peer`; the buffer must stay valid until wait().
        isend: *const fn (context: *anyopaque, peer: u32, bytes: []const u8) Error!Request,
        /// Starts receiving exactly `bytes.len` bytes from group rank `peer` into `bytes`.
        irecv: *const fn (context: *anyopaque, peer: u32, bytes: []u8) Error!Request,
        /// Blocks until the request completes, the op's deadline passes, or it is canceled.
        wait: *const fn (context: *anyopaque, request: Request) Error!void,
        /// Optional (P3): like irecv, but each chunk is reduced with spec.mine into `bytes`.
        irecv_reduce: ?*const fn (context: *anyopaque, peer: u32, bytes: []u8, spec: ReduceSpec) Error!Request = null,
    };

    pub fn canReduceOnReceive(self: Comm) bool {
        return self.vtable.irecv_reduce != null;
    }

    pub fn irecvReduce(self: Comm, peer: u32, bytes: []u8, spec: ReduceSpec) Error!Request {
        std.debug.assert(peer < self.size and peer != self.rank);
        std.debug.assert(spec.mine.len == bytes.len);
        return self.vtable.irecv_reduce.?(self.context, peer, bytes, spec);
    }

    pub fn isend(self: Comm, peer: u32, bytes: []const u8) Error!Request {
        std.debug.assert(peer < self.size and peer != self.rank);
        return self.vtable.isend(self.context, peer, bytes);
    }

    pub fn irecv(self: Comm, peer: u32, bytes: []u8) Error!Request {
        std.debug.assert(peer < self.size and peer != self.rank);
        return self.vtable.irecv(self.context, peer, bytes);
    }

    pub fn wait(self: Comm, request: Request) Error!void {
        return self.vtable.wait(self.context, request);
    }

    pub fn send(self: Comm, peer: u32, bytes: []const u8) Error!void {
        try self.wait(try self.isend(peer, bytes));
    }

    pub fn recv(self: Comm, peer: u32, bytes: []u8) Error!void {
        try self.wait(try self.irecv(peer, bytes));
    }

    /// Receive from `from` while sending to `to`: the ring step. The receive is posted first so
    /// two ranks exchanging never both block in send.
    pub fn sendRecv(self: Comm, to: u32, send_bytes: []const u8, from: u32, recv_bytes: []u8) Error!void {
        const r = try self.irecv(from, recv_bytes);
        const s = try self.isend(to, send_bytes);
        const recv_result = self.wait(r);
        try self.wait(s);
        try recv_result;
    }
};
