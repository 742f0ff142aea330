//! Completion channels of the test verbs provider (ibv_create_comp_channel, ibv_req_notify_cq,
//! ibv_get_cq_event, ibv_ack_cq_events): cases ported from google/rdma-unit-test
//! cases/comp_channel_test.cc (CompChannelTest; the test names say which), plus the pattern
//! the core's CQ poller relies on: a blocked get_cq_event wakes on a completion, a
//! non-blocking fd answers EAGAIN, and a completion already in the CQ raises no event.
const std = @import("std");
const abi = @import("abi.zig");
const lib = @import("lib.zig");
const ct = @import("conformance_test.zig");
const testing = std.testing;
const posix = std.posix;

const notify_any = false;
const notify_solicited = true;

/// Two loopback RC QPs, each with its CQ on a channel of its own (rdma-unit-test's BasicSetup).
const Setup = struct {
    context: *abi.Context,
    local_channel: *abi.CompChannel,
    remote_channel: *abi.CompChannel,
    local: ct.Client,
    remote: ct.Client,

    fn init() !Setup {
        const v = try ct.api();
        const context = try openContext(v);
        const local_channel = v.create_comp_channel(context) orelse return error.Verbs;
        const remote_channel = v.create_comp_channel(context) orelse return error.Verbs;
        const s = Setup{
            .context = context,
            .local_channel = local_channel,
            .remote_channel = remote_channel,
            .local = try ct.Client.initOn(v, context, 'a', ct.default_cap, local_channel),
            .remote = try ct.Client.initOn(v, context, 'b', ct.default_cap, remote_channel),
        };
        try ct.bringUp(v, s.local.qp, s.remote.gid, s.remote.qp.qp_num, 7);
        try ct.bringUp(v, s.remote.qp, s.local.gid, s.local.qp.qp_num, 7);
        return s;
    }

    fn deinit(s: *Setup) void {
        const v = ct.api() catch unreachable;
        s.local.deinit(v);
        s.remote.deinit(v);
        testing.expectEqual(@as(c_int, 0), v.destroy_comp_channel(s.local_channel)) catch {};
        testing.expectEqual(@as(c_int, 0), v.destroy_comp_channel(s.remote_channel)) catch {};
        testing.expectEqual(@as(c_int, 0), v.close_device(s.context)) catch {};
    }

    /// An RDMA write of the local buffer onto the remote one (DoWrite).
    fn write(s: *Setup) !void {
        var sge = [_]abi.Sge{s.local.sge()};
        var wr = ct.sendWr(1, &sge, abi.wr_rdma_write);
        wr.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(s.remote.buffer.ptr), .rkey = s.remote.mr.rkey } };
        try ct.postSendOk(&s.local, &wr);
        try testing.expectEqual(abi.WcStatus.success, (try ct.waitCompletion(s.local.cq)).status);
    }

    /// A receive posted remotely, then a send (solicited or not) from local (DoRecv + DoSend).
    fn sendReceive(s: *Setup, solicited: bool) !void {
        var rsge = [_]abi.Sge{s.remote.sge()};
        try ct.postRecv(&s.remote, 0, &rsge);
        var sge = [_]abi.Sge{s.local.sge()};
        var wr = ct.sendWr(1, &sge, abi.wr_send);
        if (solicited) wr.send_flags |= abi.send_solicited;
        try ct.postSendOk(&s.local, &wr);
        try testing.expectEqual(abi.wc_send, (try ct.waitCompletion(s.local.cq)).opcode);
        try testing.expectEqual(abi.wc_recv, (try ct.waitCompletion(s.remote.cq)).opcode);
    }
};

fn openContext(v: *const lib.Api) !*abi.Context {
    var n: c_int = 0;
    const devices = v.get_device_list(&n) orelse return error.Verbs;
    defer v.free_device_list(devices);
    try testing.expect(n >= 1);
    return v.open_device(devices[0].?) orelse error.Verbs;
}

/// The channel's fd is readable now (IsReady: select with no wait).
fn isReady(channel: *abi.CompChannel) bool {
    var fds = [1]posix.pollfd{.{ .fd = channel.fd, .events = posix.POLL.IN, .revents = 0 }};
    return (posix.poll(&fds, 0) catch 0) == 1;
}

/// The next event is `cq`'s (CheckEvent), then acked.
fn expectEventAck(channel: *abi.CompChannel, cq: *abi.Cq) !void {
    const v = try ct.api();
    var got: ?*abi.Cq = null;
    var cq_context: ?*anyopaque = null;
    try testing.expectEqual(@as(c_int, 0), v.get_cq_event(channel, &got, &cq_context));
    try testing.expectEqual(cq, got.?);
    try testing.expectEqual(cq.cq_context, cq_context);
    v.ack_cq_events(cq, 1);
}

test "CompChannelTest.CreateDestroy / DestroyChannelWithCqRef / RequestNoificationOnCqWithoutCompChannel" {
    const v = try ct.api();
    const context = try openContext(v);
    defer testing.expectEqual(@as(c_int, 0), v.close_device(context)) catch {};
    const channel = v.create_comp_channel(context).?;
    try testing.expect(channel.fd >= 0);
    const cq = v.create_cq(context, 10, null, channel, 0).?;
    // A channel a CQ still uses cannot go; the device cannot close while the channel lives.
    try testing.expectEqual(@as(c_int, @intFromEnum(posix.E.BUSY)), v.destroy_comp_channel(channel));
    try testing.expectEqual(@as(c_int, 0), v.destroy_cq(cq));
    try testing.expect(v.close_device(context) != 0);
    try testing.expectEqual(@as(c_int, 0), v.destroy_comp_channel(channel));
    const plain = v.create_cq(context, 10, null, null, 0).?;
    try testing.expect(v.reqNotifyCq(plain, notify_any) != 0);
    try testing.expectEqual(@as(c_int, 0), v.destroy_cq(plain));
}

test "CompChannelTest.Write / AcknowledgeTooMany" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.local.cq, notify_any));
    try testing.expect(!isReady(s.local_channel));
    try s.write();
    try testing.expect(isReady(s.local_channel));
    try expectEventAck(s.local_channel, s.local.cq);
    try testing.expect(!isReady(s.local_channel));
    v.ack_cq_events(s.local.cq, 9); // too many: harmless
}

test "CompChannelTest.RecvSolicitedNofitySolicited / RecvUnsolicitedNofitySolicited / RecvUnsolicitedNofityAny" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_solicited));
    try s.sendReceive(true);
    try testing.expect(!isReady(s.local_channel)); // the sender's CQ was not armed
    try testing.expect(isReady(s.remote_channel));
    try expectEventAck(s.remote_channel, s.remote.cq);
    // Armed for solicited only: an unsolicited receive raises nothing.
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_solicited));
    try s.sendReceive(false);
    try testing.expect(!isReady(s.remote_channel));
    // Armed for any: it does.
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_any));
    try s.sendReceive(false);
    try testing.expect(isReady(s.remote_channel));
    try expectEventAck(s.remote_channel, s.remote.cq);
}

test "CompChannelTest.DowngradeRequest / UpgradeRequest" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    // any, then solicited: still any.
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_any));
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_solicited));
    try s.sendReceive(false);
    try testing.expect(isReady(s.remote_channel));
    try expectEventAck(s.remote_channel, s.remote.cq);
    // solicited, then any: any.
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_solicited));
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_any));
    try s.sendReceive(false);
    try testing.expect(isReady(s.remote_channel));
    try expectEventAck(s.remote_channel, s.remote.cq);
}

test "CompChannelTest.DeleteWithUnacked (destroy_cq refuses until the event is acked)" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.local.cq, notify_any));
    try s.write();
    var got: ?*abi.Cq = null;
    var cq_context: ?*anyopaque = null;
    try testing.expectEqual(@as(c_int, 0), v.get_cq_event(s.local_channel, &got, &cq_context));
    try testing.expectEqual(s.local.cq, got.?);
    // The QP still uses the CQ: destroy it first, then the CQ refuses while the event is unacked.
    _ = v.destroy_qp(s.local.qp);
    try testing.expect(v.destroy_cq(s.local.cq) != 0);
    v.ack_cq_events(s.local.cq, 1);
    s.local.qp = try recreateQp(&s);
}

/// Setup.deinit destroys the local QP: give it a fresh one on the same CQ.
fn recreateQp(s: *Setup) !*abi.Qp {
    const v = try ct.api();
    var init_attr = abi.QpInitAttr{ .send_cq = s.local.cq, .recv_cq = s.local.cq, .cap = ct.default_cap };
    return v.create_qp(s.local.pd, &init_attr) orelse error.Verbs;
}

test "CompChannelTest.SameQueueMultipleOutstanding / ManyOutstanding (events collapse into one)" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    var i: u32 = 0;
    while (i < 100) : (i += 1) {
        try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.local.cq, notify_any));
        try s.write();
    }
    try testing.expect(isReady(s.local_channel));
    try expectEventAck(s.local_channel, s.local.cq);
    try testing.expect(!isReady(s.local_channel));
}

test "CompChannelTest.MuxOntoSingleChannel (20 CQs, one channel)" {
    const v = try ct.api();
    const context = try openContext(v);
    defer testing.expectEqual(@as(c_int, 0), v.close_device(context)) catch {};
    const channel = v.create_comp_channel(context).?;
    defer testing.expectEqual(@as(c_int, 0), v.destroy_comp_channel(channel)) catch {};
    const pairs = 20;
    var a: [pairs]ct.Client = undefined;
    var b: [pairs]ct.Client = undefined;
    var made: usize = 0;
    defer for (a[0..made], b[0..made]) |*x, *y| {
        x.deinit(v);
        y.deinit(v);
    };
    while (made < pairs) : (made += 1) {
        a[made] = try ct.Client.initOn(v, context, 'a', ct.default_cap, channel);
        b[made] = ct.Client.initOn(v, context, 'b', ct.default_cap, channel) catch |err| {
            a[made].deinit(v);
            return err;
        };
        a[made].cq.cq_context = @ptrFromInt(0x1000 + made);
        try ct.bringUp(v, a[made].qp, b[made].gid, b[made].qp.qp_num, 7);
        try ct.bringUp(v, b[made].qp, a[made].gid, a[made].qp.qp_num, 7);
    }
    for (&a, &b) |*x, *y| {
        try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(x.cq, notify_any));
        var sge = [_]abi.Sge{x.sge()};
        var wr = ct.sendWr(1, &sge, abi.wr_rdma_write);
        wr.wr = .{ .rdma = .{ .remote_addr = @intFromPtr(y.buffer.ptr), .rkey = y.mr.rkey } };
        try ct.postSendOk(x, &wr);
    }
    for (&a) |*x| try testing.expectEqual(abi.WcStatus.success, (try ct.waitCompletion(x.cq)).status);
    var seen = [_]bool{false} ** pairs;
    for (0..pairs) |_| {
        var got: ?*abi.Cq = null;
        var cq_context: ?*anyopaque = null;
        try testing.expectEqual(@as(c_int, 0), v.get_cq_event(channel, &got, &cq_context));
        const k = @intFromPtr(cq_context) - 0x1000;
        try testing.expect(k < pairs and !seen[k] and a[k].cq == got.?);
        seen[k] = true;
        v.ack_cq_events(got.?, 1);
    }
    try testing.expect(!isReady(channel));
}

test "comp channel: a completion already in the CQ raises no event; non-blocking fd gives EAGAIN; a blocked get_cq_event wakes" {
    var s = try Setup.init();
    defer s.deinit();
    const v = try ct.api();
    // Completed before the CQ was armed: no event (pollers arm, then poll once more). The
    // receive completes at the responder before its ACK leaves, so once the sender's
    // completion is in, the receiver's waits unread in its CQ.
    var rsge = [_]abi.Sge{s.remote.sge()};
    try ct.postRecv(&s.remote, 0, &rsge);
    var sge = [_]abi.Sge{s.local.sge()};
    var wr = ct.sendWr(1, &sge, abi.wr_send);
    try ct.postSendOk(&s.local, &wr);
    try testing.expectEqual(abi.wc_send, (try ct.waitCompletion(s.local.cq)).opcode);
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.remote.cq, notify_any));
    try testing.expect(!isReady(s.remote_channel));
    try testing.expectEqual(abi.wc_recv, (try ct.waitCompletion(s.remote.cq)).opcode);
    try testing.expect(!isReady(s.remote_channel));
    // Non-blocking fd, nothing waiting: EAGAIN (the core's poller uses it so).
    const flags = try posix.fcntl(s.local_channel.fd, posix.F.GETFL, 0);
    _ = try posix.fcntl(s.local_channel.fd, posix.F.SETFL, flags | @as(usize, 1 << @bitOffsetOf(posix.O, "NONBLOCK")));
    var got: ?*abi.Cq = null;
    var cq_context: ?*anyopaque = null;
    try testing.expectEqual(@as(c_int, -1), v.get_cq_event(s.local_channel, &got, &cq_context));
    try testing.expectEqual(@as(c_int, @intFromEnum(posix.E.AGAIN)), std.c._errno().*);
    _ = try posix.fcntl(s.local_channel.fd, posix.F.SETFL, flags);
    // Blocking: a waiter wakes when a completion lands.
    try testing.expectEqual(@as(c_int, 0), v.reqNotifyCq(s.local.cq, notify_any));
    const Waiter = struct {
        fn run(channel: *abi.CompChannel, out: *?*abi.Cq) void {
            var ctx: ?*anyopaque = null;
            _ = (ct.api() catch unreachable).get_cq_event(channel, out, &ctx);
        }
    };
    var woke: ?*abi.Cq = null;
    const thread = try std.Thread.spawn(.{}, Waiter.run, .{ s.local_channel, &woke });
    try s.write();
    thread.join();
    try testing.expectEqual(s.local.cq, woke.?);
    v.ack_cq_events(s.local.cq, 1);
}
