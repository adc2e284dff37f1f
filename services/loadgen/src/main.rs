//! `keepsake-loadgen`: see `keepsake-loadgen --help`.

fn main() -> anyhow::Result<()> {
    keepsake_loadgen::cli::main()
}
