//! Builds libmoonring.so (the native core) and the CUDA fatbin it embeds.
//!   zig build                     -> zig-out/lib/libmoonring.so, zig-out/lib/moonring.fatbin
//!   zig build test                -> Zig unit and multi-rank (threads) tests
//!   -Dnvcc=PATH                   -> nvcc for CUDA 13.0 (scripts/bootstrap.sh passes it)
const std = @import("std");
const builtin = @import("builtin");

/// The one Zig version this project builds with (also in scripts/toolchain.env).
const zig_version_required = "0.14.1";

comptime {
    if (!std.mem.eql(u8, builtin.zig_version_string, zig_version_required)) {
        @compileError("moonring builds only with Zig " ++ zig_version_required ++ ", this is Zig " ++
            builtin.zig_version_string ++ ": run `sh scripts/bootstrap.sh` and use .tools/bin/zig");
    }
}

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});
    const nvcc = b.option([]const u8, "nvcc", "nvcc for CUDA 13.0 (default: nvcc on PATH)") orelse "nvcc";

    // The op x dtype table -> ops_table.zig + ops_table.cuh.
    const gen_exe = b.addExecutable(.{
        .name = "gen_ops",
        .root_module = b.createModule(.{
            .root_source_file = b.path("tools/gen_ops.zig"),
            .target = b.graph.host,
            .optimize = .Debug,
        }),
    });
    const gen = b.addRunArtifact(gen_exe);
    gen.addFileArg(b.path("../src/ops/table.json"));
    const ops_table_zig = gen.addOutputFileArg("ops_table.zig");
    const ops_table_cuh = gen.addOutputFileArg("ops_table.cuh");

    // CUDA kernels -> one fatbin: SASS for sm_80 and sm_90, PTX for compute_90 (JIT on newer).
    const nvcc_cmd = b.addSystemCommand(&.{
        nvcc,                                          "-fatbin", "-O3", "-std=c++17",
        "-gencode=arch=compute_80,code=sm_80",         "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    });
    nvcc_cmd.addPrefixedDirectoryArg("-I", ops_table_cuh.dirname());
    nvcc_cmd.addArg("-o");
    const fatbin = nvcc_cmd.addOutputFileArg("moonring.fatbin");
    nvcc_cmd.addFileArg(b.path("../cuda/kernels.cu"));
    // nvcc reads headers next to kernels.cu; rerun when any of them changes.
    var cuda_dir = std.fs.cwd().openDir(b.pathFromRoot("../cuda"), .{ .iterate = true }) catch @panic("cuda/ missing");
    defer cuda_dir.close();
    var it = cuda_dir.iterate();
    while (it.next() catch null) |entry| {
        if (entry.kind == .file and (std.mem.endsWith(u8, entry.name, ".cuh") or std.mem.endsWith(u8, entry.name, ".h")))
            nvcc_cmd.addFileInput(b.path(b.fmt("../cuda/{s}", .{entry.name})));
    }
    b.getInstallStep().dependOn(&b.addInstallLibFile(fatbin, "moonring.fatbin").step);

    const root_module = b.createModule(.{
        .root_source_file = b.path("src/root.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true, // the real dlopen for libcuda.so.1 / libibverbs.so.1
    });
    root_module.addAnonymousImport("ops_table", .{ .root_source_file = ops_table_zig });
    root_module.addAnonymousImport("moonring_fatbin", .{ .root_source_file = fatbin });
    root_module.addIncludePath(b.path("include"));

    const lib = b.addLibrary(.{ .linkage = .dynamic, .name = "moonring", .root_module = root_module });
    b.installArtifact(lib);

    const test_filters = b.option([]const []const u8, "test-filter", "Run only the Zig tests whose names contain this") orelse &.{};
    const tests = b.addTest(.{ .root_module = root_module, .filters = test_filters });
    const run_tests = b.addRunArtifact(tests);
    run_tests.has_side_effects = true;
    const test_step = b.step("test", "Run the Zig unit and multi-rank tests");
    test_step.dependOn(&run_tests.step);

    // The test verbs provider (a userspace "RDMA device", docs/verbs.md) and its conformance
    // tests; the core's verbs tests load it the way production loads libibverbs.
    const fakeverbs = b.addLibrary(.{ .linkage = .dynamic, .name = "moonring_fakeverbs", .root_module = b.createModule(.{
        .root_source_file = b.path("src/verbs/fake_provider.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    }) });
    const install_fakeverbs = b.addInstallArtifact(fakeverbs, .{});
    b.getInstallStep().dependOn(&install_fakeverbs.step);
    const fakeverbs_path = b.getInstallPath(.lib, "libmoonring_fakeverbs.so");
    run_tests.setEnvironmentVariable("MOONRING_TEST_VERBS_LIB", fakeverbs_path);
    run_tests.step.dependOn(&install_fakeverbs.step);
    const conformance = b.addTest(.{ .root_module = b.createModule(.{
        .root_source_file = b.path("src/verbs/conformance_test.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    }) });
    const verbs_options = b.addOptions();
    // The ABI check compiles against rdma-core's header where it is installed.
    const have_header = if (std.fs.accessAbsolute("/usr/include/infiniband/verbs.h", .{})) true else |_| false;
    verbs_options.addOption(bool, "verbs_header", have_header);
    conformance.root_module.addOptions("verbs_options", verbs_options);
    const run_conformance = b.addRunArtifact(conformance);
    run_conformance.has_side_effects = true;
    run_conformance.setEnvironmentVariable("MOONRING_VERBS_LIB", fakeverbs_path);
    run_conformance.step.dependOn(&install_fakeverbs.step);
    test_step.dependOn(&run_conformance.step);
    // The fake CUDA driver as a libcuda stand-in (device memory = host memory): the provider's
    // dma-buf regions (GPUDirect emulation) and tests/verbs/gpu.test.ts run over it without a GPU.
    const fakecuda_module = b.createModule(.{ .root_source_file = b.path("src/cuda/fake_libcuda.zig"), .target = target, .optimize = optimize, .link_libc = true });
    const ops_table_module = b.createModule(.{ .root_source_file = ops_table_zig });
    const reduce_module = b.createModule(.{ .root_source_file = b.path("src/reduce.zig"), .target = target, .optimize = optimize });
    reduce_module.addImport("ops_table", ops_table_module);
    fakecuda_module.addImport("ops_table", ops_table_module);
    fakecuda_module.addImport("reduce", reduce_module);
    fakecuda_module.addAnonymousImport("moonring_fatbin", .{ .root_source_file = fatbin });
    const fakecuda = b.addLibrary(.{ .linkage = .dynamic, .name = "moonring_fakecuda", .root_module = fakecuda_module });
    const install_fakecuda = b.addInstallArtifact(fakecuda, .{});
    b.getInstallStep().dependOn(&install_fakecuda.step);
    run_conformance.setEnvironmentVariable("MOONRING_CUDA_DRIVER", b.getInstallPath(.lib, "libmoonring_fakecuda.so"));
    run_conformance.step.dependOn(&install_fakecuda.step);
    const verbs_step = b.step("test-verbs", "Run the test verbs provider's conformance tests");
    verbs_step.dependOn(&run_conformance.step);
}
