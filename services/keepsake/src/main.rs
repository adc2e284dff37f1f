//! `keepsake`: the server (`keepsake serve`). Everything is in the library; see `cli`.

fn main() -> anyhow::Result<std::process::ExitCode> {
    keepsake::cli::main()
}
