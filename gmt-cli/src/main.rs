//! `gmt`: fine-tune Llama and Mistral models with Gradient-Mask Tuning, on CPU, WGPU or CUDA.
//!
//! Exit codes: 0 success; 1 an error (message on stderr); 2 bad usage or an unavailable
//! backend; 130 stopped by Ctrl-C, SIGTERM or SIGHUP after saving a checkpoint.

// First: the macros of `output` are in scope for the modules declared after it.
#[macro_use]
mod output;

mod arithmetic;
mod backend;
mod checkpoint;
mod cli;
mod commands;
mod dataset;
mod distributed;
mod evaluate;
mod export;
mod fit;
mod metrics;
mod model_source;
mod objective;
mod plot;
mod settings;
mod sweep;
mod train;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::backend::BackendUnavailable;
use crate::cli::{Cli, Command};
use crate::commands::Finished;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A bare level applies to gmt's own messages; dependencies (wgpu, cubecl) only speak up
    // for warnings. A full directive (`info,wgpu=debug`) is taken as written.
    let directive = if cli.log.contains(['=', ',']) {
        cli.log.clone()
    } else {
        format!("warn,gmt={},cubecl_common=error", cli.log)
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    // Before any thread allocates: `mallopt` changes process-wide settings.
    if cli.keep_freed_memory && !gmt_train::memory::retain_freed_host_memory() {
        tracing::warn!("--keep-freed-memory: this allocator is not glibc's; ignored");
    }
    let result = match &cli.command {
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Generate(args) => commands::generate_text(args),
        Command::Export(args) => commands::export(args),
        Command::Info(args) => commands::info(args),
        Command::MakeData(args) => commands::make_data(args),
        Command::Sweep(args) => sweep::sweep(args),
        Command::Plan(args) => fit::plan(args),
    };
    match result {
        Ok(Finished::Done) => ExitCode::SUCCESS,
        Ok(Finished::Interrupted) => ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            if error.downcast_ref::<BackendUnavailable>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, `: `-separated as anyhow's `{:#}` prints them, each cause left
/// out when the text so far already says it (errors that print their source, as many
/// `Io` variants do, would otherwise repeat it).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
