//! The `goto-auth-proxy` binary: everything lives in the library; see [`goto_auth_proxy::main`].

/// jemalloc: hyper allocates a few buffers per request (an 8 KiB read buffer among them),
/// and glibc's malloc cost measurably more CPU per request; mimalloc was as fast but held
/// 11 MiB more under 256 connections (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    goto_auth_proxy::main()
}
