//! The `goto-auth-proxy` binary: everything lives in the library; see [`goto_auth_proxy::cli`].

fn main() -> std::process::ExitCode {
    goto_auth_proxy::cli::main()
}
