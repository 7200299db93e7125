//! `vigil`: one binary for every Vigil component. See `vigil --help`.

mod admin;
mod alerts_app;
mod bench;
mod cli;
mod simulate;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
