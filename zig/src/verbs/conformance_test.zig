//! Conformance tests of the test verbs provider (libmoonring_fakeverbs.so, loaded the way the
//! core loads libibverbs: lib.zig through $MOONRING_VERBS_LIB). Cases ported from
//! google/rdma-unit-test (unit/rc_test.cc LoopbackRcQpTest, unit/qp_test.cc QpTest /
//! QpStateTest / QpPostTest, unit/cq_test.cc CqOverflowTest, unit/mr_test.cc MrTest,
//! cases/comp_channel_test.cc CompChannelTest in comp_channel_test.zig); the
//! test names say which. Plus two-process cases the suite runs on two hosts: delivery between
//! processes, and retry-exceeded when the peer process is killed.
const std = @import("std");
const abi = @import("abi.zig");
const lib = @import("lib.zig");
const testing = std.testing;

comptime {
    if (@import("verbs_options").verbs_header) _ = @import("abi_check.zig");
    _ = @import("dmabuf_test.zig");
    _ = @import("comp_channel_test.zig");
}

const buffer_bytes = 64 << 10;
const wait_ms_max = 10_000;
const local_content: u8 = 'a';
const remote_content: u8 = 'b';

var api_storage: ?lib.Api = null;

pub fn api() !*const lib.Api {
    if (api_storage == null) {
        var path_buf: [512]u8 = undefined;
        var why: [256]u8 = undefined;
        const path = lib.libraryPath(&path_buf);
        if (std.mem.eql(u8, path, lib.soname)) return error.SkipZigTest; // no test provider named
        api_storage = try lib.load(path, &why);
    }
    return &api_storage.?;
}

pub const Client = struct {
    context: *abi.Context,
    pd: *abi.Pd,
    cq: *abi.Cq,
    qp: *abi.Qp,
    buffer: []u8,
    mr: *abi.Mr,
    gid: abi.Gid,

    fn init(v: *const lib.Api, context: *abi.Context, content: u8, cap: abi.QpCap) !Client {
        return initOn(v, context, content, cap, null);
    }

    /// With its CQ on a completion channel (comp_channel_test.zig).
    pub fn initOn(v: *const lib.Api, context: *abi.Context, content: u8, cap: abi.QpCap, channel: ?*abi.CompChannel) !Client {
        const pd = v.alloc_pd(context) orelse return error.Verbs;
        const cq = v.create_cq(context, 64, null, channel, 0) orelse return error.Verbs;
        var init_attr = abi.QpInitAttr{ .send_cq = cq, .recv_cq = cq, .cap = cap };
        const qp = v.create_qp(pd, &init_attr) orelse return error.Verbs;
        const buffer = try testing.allocator.alloc(u8, buffer_bytes);
        @memset(buffer, content);
        const access = abi.access_local_write | abi.access_remote_write | abi.access_remote_read;
        const mr = v.reg_mr(pd, buffer.ptr, buffer.len, access) orelse return error.Verbs;
        var gid: abi.Gid = undefined;
        try testing.expectEqual(@as(c_int, 0), v.query_gid(context, 1, 0, &gid));
        return .{ .context = context, .pd = pd, .cq = cq, .qp = qp, .buffer = buffer, .mr = mr, .gid = gid };
    }

    pub fn deinit(c: *Client, v: *const lib.Api) void {
        _ = v.destroy_qp(c.qp);
        _ = v.dereg_mr(c.mr);
        _ = v.destroy_cq(c.cq);
        _ = v.dealloc_pd(c.pd);
        testing.allocator.free(c.buffer);
    }

    pub fn sge(c: *const Client) abi.Sge {
        return .{ .addr = @intFromPtr(c.buffer.ptr), .length = @intCast(c.buffer.len), .lkey = c.mr.lkey };
    }
};

pub const default_cap = abi.QpCap{ .max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 2, .max_recv_sge = 2, .max_inline_data = 64 };

/// RC transport timeout 2^18 x 4.096 us ~ 1.07 s per try (rdma-unit-test uses 14, ~67 ms): on
/// this shared 2-core machine a loaded progress thread must not look like a dead peer.
const qp_timeout_code: u8 = 18;

/// RESET -> INIT -> RTR -> RTS toward (gid, qpn), with the attributes rdma-unit-test uses.
pub fn bringUp(v: *const lib.Api, qp: *abi.Qp, gid: abi.Gid, qpn: u32, rnr_retry: u8) !void {
    var attr = abi.QpAttr{ .qp_state = .init, .port_num = 1, .qp_access_flags = @intCast(abi.access_local_write | abi.access_remote_write | abi.access_remote_read) };
    try testing.expectEqual(@as(c_int, 0), v.modify_qp(qp, &attr, abi.qp_state | abi.qp_pkey_index | abi.qp_port | abi.qp_access_flags));
    attr = .{ .qp_state = .rtr, .path_mtu = abi.mtu_1024, .dest_qp_num = qpn, .max_dest_rd_atomic = 4, .min_rnr_timer = 1 };
    attr.ah_attr = .{ .is_global = 1, .port_num = 1 };
    attr.ah_attr.grh.dgid = gid;
    attr.ah_attr.grh.hop_limit = 64;
    try testing.expectEqual(@as(c_int, 0), v.modify_qp(qp, &attr, abi.qp_state | abi.qp_av | abi.qp_path_mtu | abi.qp_dest_qpn | abi.qp_rq_psn | abi.qp_max_dest_rd_atomic | abi.qp_min_rnr_timer));
    attr = .{ .qp_state = .rts, .timeout = qp_timeout_code, .retry_cnt = 3, .rnr_retry = rnr_retry, .max_rd_atomic = 4 };
    try testing.expectEqual(@as(c_int, 0), v.modify_qp(qp, &attr, abi.qp_state | abi.qp_sq_psn | abi.qp_timeout | abi.qp_retry_cnt | abi.qp_rnr_retry | abi.qp_max_qp_rd_atomic));
}

pub const Pair = struct {
    context: *abi.Context,
    local: Client,
    remote: Client,

    pub fn init(rnr_retry: u8) !Pair {
        return initCap(rnr_retry, default_cap);
    }

    fn initCap(rnr_retry: u8, cap: abi.QpCap) !Pair {
        const v = try api();
        var n: c_int = 0;
        const devices = v.get_device_list(&n) orelse return error.Verbs;
        try testing.expect(n >= 1);
        const context = v.open_device(devices[0].?) orelse return error.Verbs;
        v.free_device_list(devices);
        const pair = Pair{ .context = context, .local = try Client.init(v, context, local_content, cap), .remote = try Client.init(v, context, remote_content, cap) };
        try bringUp(v, pair.local.qp, pair.remote.gid, pair.remote.qp.qp_num, rnr_retry);
        try bringUp(v, pair.remote.qp, pair.local.gid, pair.local.qp.qp_num, rnr_retry);
        return pair;
    }

    pub fn deinit(p: *Pair) void {
        const v = api() catch unreachable;
        p.local.deinit(v);
        p.remote.deinit(v);
        testing.expectEqual(@as(c_int, 0), v.close_device(p.context)) catch {};
    }
};

/// Polls until one completion arrives (bounded by wait_ms_max).
pub fn waitCompletion(cq: *abi.Cq) !abi.Wc {
    const v = try api();
    var wc: [1]abi.Wc = undefined;
    const deadline = std.time.milliTimestamp() + wait_ms_max;
    while (std.time.milliTimestamp() < deadline) {
        const n = v.pollCq(cq, &wc);
        if (n < 0) return error.CqError;
        if (n == 1) return wc[0];
        std.Thread.sleep(100 * std.time.ns_per_us);
    }
    return error.NoCompletion;
}

/// No completion within a short window (rdma-unit-test's ExpectNoCompletion).
fn expectNoCompletion(cq: *abi.Cq) !void {
    const v = try api();
    var wc: [1]abi.Wc = undefined;
    const deadline = std.time.milliTimestamp() + 100;
    while (std.time.milliTimestamp() < deadline) {
        try testing.expectEqual(@as(c_int, 0), v.pollCq(cq, &wc));
        std.Thread.sleep(1 * std.time.ns_per_ms);
    }
}

pub fn postRecv(c: *Client, wr_id: u64, sges: []abi.Sge) !void {
    const v = try api();
    var wr = abi.RecvWr{ .wr_id = wr_id, .sg_list = if (sges.len == 0) null else sges.ptr, .num_sge = @intCast(sges.len) };
    try testing.expectEqual(@as(c_int, 0), v.postRecv(c.qp, &wr));
}

pub fn sendWr(wr_id: u64, sges: []abi.Sge, opcode: u32) abi.SendWr {
    return .{ .wr_id = wr_id, .sg_list = if (sges.len == 0) null else sges.ptr, .num_sge = @intCast(sges.len), .opcode = opcode, .send_flags = abi.send_signaled };
}

pub fn expectAll(bytes: []const u8, value: u8) !void {
    for (bytes) |b| try testing.expectEqual(value, b);
}

fn qpState(qp: *abi.Qp) !abi.QpState {
    const v = try api();
    var attr: abi.QpAttr = undefined;
    var init_attr: abi.QpInitAttr = undefined;
    try testing.expectEqual(@as(c_int, 0), v.query_qp(qp, &attr, abi.qp_state, &init_attr));
    return attr.qp_state;
}

test "LoopbackRcQpTest.Send" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    try testing.expectEqual(@as(c_int, 0), (try api()).postSend(p.local.qp, &wr));
    const c = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.success, c.status);
    try testing.expectEqual(abi.wc_send, c.opcode);
    try testing.expectEqual(p.local.qp.qp_num, c.qp_num);
    try testing.expectEqual(@as(u64, 1), c.wr_id);
    const r = try waitCompletion(p.remote.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try testing.expectEqual(abi.wc_recv, r.opcode);
    try testing.expectEqual(p.remote.qp.qp_num, r.qp_num);
    try testing.expectEqual(@as(u64, 0), r.wr_id);
    try testing.expectEqual(@as(c_uint, 0), r.wc_flags);
    try testing.expectEqual(@as(u32, buffer_bytes), r.byte_len);
    try expectAll(p.remote.buffer, local_content);
}

pub fn postSendOk(c: *Client, wr: *abi.SendWr) !void {
    try testing.expectEqual(@as(c_int, 0), (try api()).postSend(c.qp, wr));
}

test "LoopbackRcQpTest.SendEmptySgl / SendZeroSize" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    var wr = sendWr(1, &.{}, abi.wr_send);
    try postSendOk(&p.local, &wr);
    const c = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.success, c.status);
    const r = try waitCompletion(p.remote.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try testing.expectEqual(@as(u32, 0), r.byte_len);
    try expectAll(p.remote.buffer, remote_content);
}

test "LoopbackRcQpTest.UnsignaledSend" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    wr.send_flags = 0;
    try postSendOk(&p.local, &wr);
    const r = try waitCompletion(p.remote.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try expectAll(p.remote.buffer, local_content);
    try expectNoCompletion(p.local.cq);
}

test "LoopbackRcQpTest.SendInlineData (unregistered source, freed after post)" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    const source = try testing.allocator.alloc(u8, default_cap.max_inline_data);
    @memset(source, 'c');
    var lsge = [_]abi.Sge{.{ .addr = @intFromPtr(source.ptr), .length = @intCast(source.len), .lkey = 0xdeadbeef }};
    var wr = sendWr(1, &lsge, abi.wr_send);
    wr.send_flags |= abi.send_inline;
    try postSendOk(&p.local, &wr);
    source[0] = local_content;
    testing.allocator.free(source);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.remote.cq)).status);
    try expectAll(p.remote.buffer[0..default_cap.max_inline_data], 'c');
    try expectAll(p.remote.buffer[default_cap.max_inline_data..], remote_content);
}

test "LoopbackRcQpTest.SendExceedMaxInlineData" {
    var p = try Pair.init(7);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    lsge[0].length = default_cap.max_inline_data + 1;
    var wr = sendWr(1, &lsge, abi.wr_send);
    wr.send_flags |= abi.send_inline;
    try testing.expect((try api()).postSend(p.local.qp, &wr) != 0);
    try expectNoCompletion(p.local.cq);
}

test "LoopbackRcQpTest.SendImmData" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send_with_imm);
    wr.imm_data = abi.immEncode(0xbaddcafe);
    try postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    const r = try waitCompletion(p.remote.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try testing.expect(r.wc_flags & abi.wc_with_imm != 0);
    try testing.expectEqual(@as(u32, 0xbaddcafe), abi.immDecode(r.imm_data));
}

test "LoopbackRcQpTest.SendWithTooSmallRecv" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    rsge[0].length = 1;
    try postRecv(&p.remote, 0, &rsge);
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    try postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.rem_inv_req_err, (try waitCompletion(p.local.cq)).status);
    try testing.expectEqual(abi.WcStatus.loc_len_err, (try waitCompletion(p.remote.cq)).status);
    try testing.expectEqual(abi.QpState.err, try qpState(p.local.qp));
    try testing.expectEqual(abi.QpState.err, try qpState(p.remote.qp));
}

test "LoopbackRcQpTest.SendRnr (rnr_retry 0, no receive posted)" {
    var p = try Pair.init(0);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    try postSendOk(&p.local, &wr);
    const c = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.rnr_retry_exc_err, c.status);
    try testing.expectEqual(@as(u64, 1), c.wr_id);
}

test "LoopbackRcQpTest.SendRnrInfiniteRetries (the send lands once a receive is posted)" {
    var p = try Pair.init(7);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    try postSendOk(&p.local, &wr);
    try expectNoCompletion(p.local.cq);
    var rsge = [_]abi.Sge{p.remote.sge()};
    try postRecv(&p.remote, 0, &rsge);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.remote.cq)).status);
    try expectAll(p.remote.buffer, local_content);
}

test "LoopbackRcQpTest.BadRecvLkey" {
    var p = try Pair.init(7);
    defer p.deinit();
    var rsge = [_]abi.Sge{p.remote.sge()};
    rsge[0].lkey +%= 10;
    try postRecv(&p.remote, 0, &rsge);
    var lsge = [_]abi.Sge{p.local.sge()};
    var wr = sendWr(1, &lsge, abi.wr_send);
    try postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.rem_op_err, (try waitCompletion(p.local.cq)).status);
    try testing.expectEqual(abi.WcStatus.loc_prot_err, (try waitCompletion(p.remote.cq)).status);
}

test "LoopbackRcQpTest.SendInvalidLkey / RecvPayloadExceedMr" {
    var p = try Pair.init(7);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    lsge[0].lkey +%= 10;
    var wr = sendWr(1, &lsge, abi.wr_send);
    try postSendOk(&p.local, &wr);
    const c = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.loc_prot_err, c.status);
    try testing.expectEqual(@as(u64, 1), c.wr_id);
    // Out of bounds of a valid key fails the same way (a fresh pair: this QP is in error now).
    var q = try Pair.init(7);
    defer q.deinit();
    var osge = [_]abi.Sge{q.local.sge()};
    osge[0].length += 1;
    var wr2 = sendWr(2, &osge, abi.wr_send);
    try postSendOk(&q.local, &wr2);
    try testing.expectEqual(abi.WcStatus.loc_prot_err, (try waitCompletion(q.local.cq)).status);
}

test "LoopbackRcQpTest.BasicRead / BasicWrite / ReadInvalidRkey / WriteInvalidRkey" {
    var p = try Pair.init(7);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    var read = sendWr(1, &lsge, abi.wr_rdma_read);
    read.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(p.remote.buffer.ptr), .rkey = p.remote.mr.rkey } };
    try postSendOk(&p.local, &read);
    const c = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.success, c.status);
    try testing.expectEqual(abi.wc_rdma_read, c.opcode);
    try expectAll(p.local.buffer, remote_content);
    @memset(p.local.buffer, 'w');
    var write = sendWr(2, &lsge, abi.wr_rdma_write);
    write.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(p.remote.buffer.ptr), .rkey = p.remote.mr.rkey } };
    try postSendOk(&p.local, &write);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    try expectAll(p.remote.buffer, 'w');
    try expectNoCompletion(p.remote.cq); // a plain write consumes no receive
    // A bad rkey: remote access error, the remote memory untouched, then flushed.
    @memset(p.local.buffer, 'x');
    write.wr.rdma.rkey +%= 10;
    write.wr_id = 3;
    try postSendOk(&p.local, &write);
    var next = sendWr(4, &lsge, abi.wr_rdma_write);
    next.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(p.remote.buffer.ptr), .rkey = p.remote.mr.rkey } };
    try postSendOk(&p.local, &next);
    const bad = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.rem_access_err, bad.status);
    try testing.expectEqual(@as(u64, 3), bad.wr_id);
    const flushed = try waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.wr_flush_err, flushed.status);
    try testing.expectEqual(@as(u64, 4), flushed.wr_id);
    try expectAll(p.remote.buffer, 'w');
    try testing.expectEqual(abi.QpState.err, try qpState(p.local.qp));
}

test "LoopbackRcQpTest.WriteImmData / WriteZeroByteWithImmData / WriteImmDataRnR" {
    var p = try Pair.init(7);
    defer p.deinit();
    try postRecv(&p.remote, 0, &.{});
    var lsge = [_]abi.Sge{p.local.sge()};
    var write = sendWr(1, &lsge, abi.wr_rdma_write_with_imm);
    write.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(p.remote.buffer.ptr), .rkey = p.remote.mr.rkey } };
    write.imm_data = abi.immEncode(77);
    try postSendOk(&p.local, &write);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    const r = try waitCompletion(p.remote.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try testing.expectEqual(abi.wc_recv_rdma_with_imm, r.opcode);
    try testing.expectEqual(@as(u32, 77), abi.immDecode(r.imm_data));
    try testing.expectEqual(@as(u32, buffer_bytes), r.byte_len);
    try expectAll(p.remote.buffer, local_content);
    // Zero bytes with immediate: a completion, no memory touched.
    try postRecv(&p.remote, 5, &.{});
    var zero = sendWr(2, &.{}, abi.wr_rdma_write_with_imm);
    zero.imm_data = abi.immEncode(78);
    try postSendOk(&p.local, &zero);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(p.local.cq)).status);
    try testing.expectEqual(@as(u32, 78), abi.immDecode((try waitCompletion(p.remote.cq)).imm_data));
    // No receive posted and rnr_retry 0 on a fresh pair: RNR retry exceeded.
    var q = try Pair.init(0);
    defer q.deinit();
    var qsge = [_]abi.Sge{q.local.sge()};
    var rnr = sendWr(3, &qsge, abi.wr_rdma_write_with_imm);
    rnr.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(q.remote.buffer.ptr), .rkey = q.remote.mr.rkey } };
    try postSendOk(&q.local, &rnr);
    try testing.expectEqual(abi.WcStatus.rnr_retry_exc_err, (try waitCompletion(q.local.cq)).status);
}

test "LoopbackRcQpTest.QpSigAll / FullSubmissionQueue (QpPostTest.OverflowSendWr)" {
    const cap = abi.QpCap{ .max_send_wr = 2, .max_recv_wr = 2, .max_send_sge = 1, .max_recv_sge = 1, .max_inline_data = 0 };
    var p = try Pair.initCap(0, cap);
    defer p.deinit();
    var lsge = [_]abi.Sge{p.local.sge()};
    var wrs: [3]abi.SendWr = undefined;
    for (&wrs, 0..) |*w, i| {
        w.* = sendWr(i, &lsge, abi.wr_rdma_write);
        w.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(p.remote.buffer.ptr), .rkey = p.remote.mr.rkey } };
    }
    const v = try api();
    // Two fit; the third is refused with ENOMEM while they are outstanding or just completed.
    try testing.expectEqual(@as(c_int, 0), v.postSend(p.local.qp, &wrs[0]));
    try testing.expectEqual(@as(c_int, 0), v.postSend(p.local.qp, &wrs[1]));
    try testing.expectEqual(@as(c_int, @intFromEnum(std.posix.E.NOMEM)), v.postSend(p.local.qp, &wrs[2]));
    try testing.expectEqual(@as(u64, 0), (try waitCompletion(p.local.cq)).wr_id);
    try testing.expectEqual(@as(u64, 1), (try waitCompletion(p.local.cq)).wr_id);
}

test "QpTest.ModifyInvalidResetToRtrTransition / ModifyBad*StateTransition / PostSendReset / PostRecvReset" {
    const v = try api();
    var n: c_int = 0;
    const devices = v.get_device_list(&n).?;
    const context = v.open_device(devices[0].?).?;
    var c = try Client.init(v, context, 0, default_cap);
    defer {
        c.deinit(v);
        _ = v.close_device(context);
    }
    var attr = abi.QpAttr{ .qp_state = .rtr, .path_mtu = abi.mtu_1024 };
    try testing.expect(v.modify_qp(c.qp, &attr, abi.qp_state) != 0); // RESET -> RTR
    attr = .{ .qp_state = .init, .port_num = 1 };
    try testing.expect(v.modify_qp(c.qp, &attr, abi.qp_state | abi.qp_port) != 0); // missing masks
    var sge = [_]abi.Sge{c.sge()};
    var wr = sendWr(1, &sge, abi.wr_send);
    try testing.expect(v.postSend(c.qp, &wr) != 0); // RESET
    var rwr = abi.RecvWr{ .wr_id = 1, .sg_list = &sge, .num_sge = 1 };
    try testing.expect(v.postRecv(c.qp, &rwr) != 0);
    try testing.expectEqual(@as(c_int, 0), v.modify_qp(c.qp, &attr, abi.qp_state | abi.qp_port | abi.qp_pkey_index | abi.qp_access_flags));
    try testing.expectEqual(@as(c_int, 0), v.postRecv(c.qp, &rwr)); // INIT accepts receives
    try testing.expect(v.postSend(c.qp, &wr) != 0); // INIT refuses sends
    attr = .{ .qp_state = .rtr, .path_mtu = abi.mtu_1024, .dest_qp_num = c.qp.qp_num };
    attr.ah_attr = .{ .is_global = 1, .port_num = 1 };
    attr.ah_attr.grh.dgid = c.gid;
    try testing.expect(v.modify_qp(c.qp, &attr, abi.qp_state | abi.qp_av | abi.qp_dest_qpn) != 0); // INIT -> RTR needs more
    attr.qp_state = .rts;
    try testing.expect(v.modify_qp(c.qp, &attr, abi.qp_state | abi.qp_sq_psn | abi.qp_timeout | abi.qp_retry_cnt | abi.qp_rnr_retry | abi.qp_max_qp_rd_atomic) != 0); // INIT -> RTS
    // To error: the posted receive is flushed; later sends complete flushed.
    attr = .{ .qp_state = .err };
    try testing.expectEqual(@as(c_int, 0), v.modify_qp(c.qp, &attr, abi.qp_state));
    const flushed = try waitCompletion(c.cq);
    try testing.expectEqual(abi.WcStatus.wr_flush_err, flushed.status);
    try testing.expectEqual(abi.wc_recv, flushed.opcode);
    try testing.expectEqual(@as(c_int, 0), v.postSend(c.qp, &wr)); // QpStateTest.PostSendErr
    try testing.expectEqual(abi.WcStatus.wr_flush_err, (try waitCompletion(c.cq)).status);
}

test "MrTest.RemoteWriteWithoutLocalWrite" {
    const v = try api();
    var n: c_int = 0;
    const devices = v.get_device_list(&n).?;
    const context = v.open_device(devices[0].?).?;
    defer _ = v.close_device(context);
    const pd = v.alloc_pd(context).?;
    defer _ = v.dealloc_pd(pd);
    var bytes: [64]u8 = undefined;
    try testing.expect(v.reg_mr(pd, &bytes, bytes.len, abi.access_remote_write) == null);
}

test "CqOverflowTest.SendCqOverflow (an overrun CQ goes to error)" {
    const v = try api();
    var n: c_int = 0;
    const devices = v.get_device_list(&n).?;
    const context = v.open_device(devices[0].?).?;
    var a = try Client.init(v, context, local_content, default_cap);
    var b = try Client.init(v, context, remote_content, default_cap);
    defer {
        a.deinit(v);
        b.deinit(v);
        _ = v.close_device(context);
    }
    const small_cq = v.create_cq(context, 2, null, null, 0).?;
    defer _ = v.destroy_cq(small_cq);
    // a's sends complete on a CQ of 2 entries: 4 signaled writes overrun it.
    _ = v.destroy_qp(a.qp);
    var init_attr = abi.QpInitAttr{ .send_cq = small_cq, .recv_cq = a.cq, .cap = default_cap };
    a.qp = v.create_qp(a.pd, &init_attr).?;
    try bringUp(v, a.qp, b.gid, b.qp.qp_num, 7);
    try bringUp(v, b.qp, a.gid, a.qp.qp_num, 7);
    var sge = [_]abi.Sge{a.sge()};
    for (0..4) |i| {
        var w = sendWr(i, &sge, abi.wr_rdma_write);
        w.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(b.buffer.ptr), .rkey = b.mr.rkey } };
        try testing.expectEqual(@as(c_int, 0), v.postSend(a.qp, &w));
    }
    var wc: [4]abi.Wc = undefined;
    const deadline = std.time.milliTimestamp() + wait_ms_max;
    var seen: usize = 0;
    while (std.time.milliTimestamp() < deadline) {
        const got = v.pollCq(small_cq, wc[0..1]);
        if (got < 0) break;
        seen += @intCast(got);
        if (got == 0) std.Thread.sleep(std.time.ns_per_ms);
    } else return error.NoOverrun;
    try testing.expect(seen <= 2);
}

/// What one process tells the other to connect (an out-of-band exchange, as the suite's
/// two-host mode does over its RPC).
const Address = extern struct { gid: abi.Gid, qpn: u32, rkey: u32, addr: u64 };

fn openClient(content: u8) !struct { context: *abi.Context, client: Client } {
    const v = try api();
    var n: c_int = 0;
    const devices = v.get_device_list(&n) orelse return error.Verbs;
    const context = v.open_device(devices[0].?) orelse return error.Verbs;
    return .{ .context = context, .client = try Client.init(v, context, content, default_cap) };
}

fn exchange(read_fd: std.posix.fd_t, write_fd: std.posix.fd_t, mine: Address) !Address {
    _ = try std.posix.write(write_fd, std.mem.asBytes(&mine));
    var theirs: Address = undefined;
    const got = try std.posix.read(read_fd, std.mem.asBytes(&theirs));
    if (got != @sizeOf(Address)) return error.ShortRead;
    return theirs;
}

/// The child side: connect, take one send into its buffer, answer with an RDMA write of 'z' into
/// the parent's buffer, report over the pipe, then wait to be killed (or exit).
fn childMain(to_parent: std.posix.fd_t, from_parent: std.posix.fd_t, wait_for_kill: bool) !void {
    const v = try api();
    var me = try openClient(remote_content);
    const c = &me.client;
    const peer = try exchange(from_parent, to_parent, .{ .gid = c.gid, .qpn = c.qp.qp_num, .rkey = c.mr.rkey, .addr = @intFromPtr(c.buffer.ptr) });
    try bringUp(v, c.qp, peer.gid, peer.qpn, 7);
    var rsge = [_]abi.Sge{c.sge()};
    try postRecv(c, 0, &rsge);
    _ = try std.posix.write(to_parent, "r");
    const r = try waitCompletion(c.cq);
    if (r.status != .success) return error.RecvFailed;
    try expectAll(c.buffer, local_content);
    @memset(c.buffer, 'z');
    var w = sendWr(9, &rsge, abi.wr_rdma_write);
    w.wr = .{ .rdma = .{ .remote_addr = peer.addr, .rkey = peer.rkey } };
    try postSendOk(c, &w);
    if ((try waitCompletion(c.cq)).status != .success) return error.WriteFailed;
    _ = try std.posix.write(to_parent, "d");
    if (wait_for_kill) while (true) std.Thread.sleep(std.time.ns_per_s);
}

const Child = struct { pid: std.posix.pid_t, to_child: std.posix.fd_t, from_child: std.posix.fd_t };

fn forkChild(wait_for_kill: bool) !Child {
    const down = try std.posix.pipe();
    const up = try std.posix.pipe();
    const pid = try std.posix.fork();
    if (pid == 0) {
        childMain(up[1], down[0], wait_for_kill) catch std.posix.exit(1);
        std.posix.exit(0);
    }
    std.posix.close(down[0]);
    std.posix.close(up[1]);
    return .{ .pid = pid, .to_child = down[1], .from_child = up[0] };
}

fn expectByte(fd: std.posix.fd_t, want: u8) !void {
    var b: [1]u8 = undefined;
    try testing.expectEqual(@as(usize, 1), try std.posix.read(fd, &b));
    try testing.expectEqual(want, b[0]);
}

/// Connects to a forked child, sends it one message and sees its RDMA write back.
fn exchangeWithChild(v: *const lib.Api, c: *Client, wait_for_kill: bool) !struct { child: Child, peer: Address } {
    const child = try forkChild(wait_for_kill);
    const peer = try exchange(child.from_child, child.to_child, .{ .gid = c.gid, .qpn = c.qp.qp_num, .rkey = c.mr.rkey, .addr = @intFromPtr(c.buffer.ptr) });
    try bringUp(v, c.qp, peer.gid, peer.qpn, 7);
    try expectByte(child.from_child, 'r');
    var sge = [_]abi.Sge{c.sge()};
    var wr = sendWr(1, &sge, abi.wr_send);
    try postSendOk(c, &wr);
    try testing.expectEqual(abi.WcStatus.success, (try waitCompletion(c.cq)).status);
    try expectByte(child.from_child, 'd');
    try expectAll(c.buffer, 'z');
    return .{ .child = child, .peer = peer };
}

test "two processes: send one way, RDMA write back" {
    const v = try api();
    var me = try openClient(local_content);
    defer {
        me.client.deinit(v);
        _ = v.close_device(me.context);
    }
    const done = try exchangeWithChild(v, &me.client, false);
    const result = std.posix.waitpid(done.child.pid, 0);
    try testing.expectEqual(@as(u32, 0), result.status);
}

test "two processes: the peer is killed, requests complete retry-exceeded" {
    const v = try api();
    var me = try openClient(local_content);
    defer {
        me.client.deinit(v);
        _ = v.close_device(me.context);
    }
    const c = &me.client;
    const done = try exchangeWithChild(v, c, true);
    const peer = done.peer;
    try std.posix.kill(done.child.pid, std.posix.SIG.KILL);
    _ = std.posix.waitpid(done.child.pid, 0);
    var sge = [_]abi.Sge{c.sge()};
    var write = sendWr(2, &sge, abi.wr_rdma_write);
    write.wr = .{ .rdma = .{ .remote_addr = peer.addr, .rkey = peer.rkey } };
    try postSendOk(c, &write);
    const failed = try waitCompletion(c.cq);
    try testing.expectEqual(abi.WcStatus.retry_exc_err, failed.status);
    try testing.expectEqual(@as(u64, 2), failed.wr_id);
    try testing.expectEqual(abi.QpState.err, try qpState(c.qp));
}
