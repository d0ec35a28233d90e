//! `modelship`: parse the command line, start logging, run the command, and
//! turn its error into a message with its causes and an exit code.

mod bench;
mod build;
mod compute;
mod distill;
mod evaluate;
mod inspect;
mod listing;
mod ops;
mod plan;
mod quantize;
mod render;
mod serve;
mod spec;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Deploy AI models: inspect, quantize, evaluate, plan, serve, and run them behind a gateway.
#[derive(Parser)]
#[command(name = "modelship", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: architecture, parameters, dtypes, sizes.
    Inspect(inspect::Args),
    /// Load a model and serve the OpenAI and Open Inference Protocol APIs.
    Serve(serve::Args),
    /// Write a model as GGUF in another precision (llama.cpp-compatible).
    Quantize(quantize::QuantizeArgs),
    /// Zero the smallest weights (--sparsity) or remove the least important FFN channels and heads (--ffn, --heads); write GGUF.
    Prune(quantize::PruneArgs),
    /// Build a smaller student from a model by dropping layers.
    Distill(distill::Args),
    /// Measure a model's quality against a reference model.
    Eval(evaluate::EvalArgs),
    /// Try the spec's precisions, measure each, keep the smallest that passes its gate.
    Optimize(evaluate::OptimizeArgs),
    /// Estimate a replica's memory and CPU, count replicas, place them on nodes.
    Plan(plan::Args),
    /// Measure a replica's throughput and latency at increasing concurrency.
    Bench(bench::Args),
    /// Run the control plane: API, controller, gateway and state store.
    Up(up::Args),
    /// Run one more gateway, routing by what a control plane publishes in etcd.
    Gateway(up::GatewayArgs),
    /// Take a spec through the pipeline and roll out a new revision.
    Deploy(ops::DeployArgs),
    /// List deployments, revisions, replicas or pipeline runs.
    Get(listing::GetArgs),
    /// A deployment's replicas and recent events.
    Status(ops::NameArgs),
    /// A deployment's revisions.
    History(ops::NameArgs),
    /// Serve an earlier revision again.
    Rollback(ops::RollbackArgs),
    /// Set a deployment's replica count.
    Scale(ops::ScaleArgs),
    /// Move a rollout in progress to its next step now, skipping what the
    /// step waits for (its analysis, the blue-green scale-down delay).
    Promote(ops::PromoteArgs),
    /// Fail a rollout in progress: back to the revision that served before.
    Abort(ops::NameArgs),
    /// Stop a deployment's replicas and forget it.
    Delete(ops::NameArgs),
    /// A deployment's replicas' output.
    Logs(ops::LogsArgs),
    /// Configuration for other proxies in front of a deployment's replicas.
    #[command(subcommand)]
    Render(render::RenderCommand),
    /// Build the deployment's OCI image (no daemon, no base image).
    Build(build::Args),
    /// Exit 0 when a URL answers 2xx: the image's health check.
    Probe(build::ProbeArgs),
    /// Print the ModelDeployment CustomResourceDefinition (generated from the spec's types).
    Crd,
}

/// Exit codes: 1 the user's problem, 2 a bug, 64 bad configuration.
pub enum Failure {
    User(anyhow::Error),
    Config(anyhow::Error),
}

impl Failure {
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::User(e) | Failure::Config(e) => e,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::User(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    std::panic::set_hook(Box::new(bug_report));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    ExitCode::from(exit_code(std::panic::catch_unwind(move || {
        dispatch(cli.command)
    })))
}

/// STYLE.md's exit codes: 0 ok, 1 the user's problem, 64 bad
/// configuration, 2 a bug (a panic, which the hook has reported).
fn exit_code(outcome: std::thread::Result<Result<(), Failure>>) -> u8 {
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(Failure::User(e))) => report(&e, 1),
        Ok(Err(Failure::Config(e))) => report(&e, 64),
        Err(_) => 2,
    }
}

/// A panic is a bug in modelship, never the user's doing: a short report
/// of where, and what to send (the backtrace only when asked for).
fn bug_report(info: &std::panic::PanicHookInfo<'_>) {
    let what = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let at = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()));
    let thread = std::thread::current();
    let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    eprint!(
        "{}",
        bug_text(
            &what,
            at.as_deref(),
            thread.name().unwrap_or("unnamed"),
            backtrace
        )
    );
    if backtrace {
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
    }
}

/// The report of a panic: what, where, and what to send.
fn bug_text(what: &str, at: Option<&str>, thread: &str, backtrace: bool) -> String {
    let at = at.map_or(String::new(), |a| format!(" at {a}"));
    let mut text = format!(
        "bug: modelship {} panicked in thread `{thread}`{at}: {what}\n",
        env!("CARGO_PKG_VERSION")
    );
    if !backtrace {
        text.push_str("hint: this is a bug; please report it with the command you ran and the output of RUST_BACKTRACE=1\n");
    }
    text
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Inspect(args) => inspect::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Quantize(args) => quantize::run_quantize(args),
        Command::Prune(args) => quantize::run_prune(args),
        Command::Distill(args) => distill::run(args),
        Command::Eval(args) => evaluate::run_eval(args),
        Command::Optimize(args) => evaluate::run_optimize(args),
        Command::Plan(args) => plan::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Up(args) => up::run(args),
        Command::Gateway(args) => up::gateway(args),
        Command::Deploy(args) => ops::deploy(args),
        Command::Get(args) => listing::get(args),
        Command::Status(args) => listing::status(args),
        Command::History(args) => listing::history(args),
        Command::Rollback(args) => ops::rollback(args),
        Command::Scale(args) => ops::scale(args),
        Command::Promote(args) => ops::promote(args),
        Command::Abort(args) => ops::abort(args),
        Command::Delete(args) => ops::delete(args),
        Command::Logs(args) => ops::logs(args),
        Command::Render(command) => render::render(command),
        Command::Build(args) => build::run(args),
        Command::Probe(args) => build::probe(args),
        Command::Crd => render::crd(),
    }
}

/// Prints `value` as pretty JSON with `--json`, else as `text` renders it.
pub fn print_output<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("plain data serializes")
        );
    } else {
        print!("{}", text(value));
    }
}

/// Prints the error and its causes, then the hints any of them carry
/// (lines starting `hint:`), so the advice comes after the whole story.
fn report(e: &anyhow::Error, code: u8) -> u8 {
    eprint!("{}", chain_text(e));
    code
}

fn chain_text(e: &anyhow::Error) -> String {
    let mut hints = Vec::new();
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        let (said, hinted): (Vec<&str>, Vec<&str>) = text
            .lines()
            .partition(|l| !l.trim_start().starts_with("hint:"));
        hints.extend(hinted.into_iter().map(|h| h.trim().to_owned()));
        let lead = if i == 0 { "error: " } else { "  caused by: " };
        out.push_str(lead);
        out.push_str(&said.join("\n"));
        out.push('\n');
    }
    for hint in hints {
        out.push_str(&hint);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_exits_2_and_errors_by_their_kind() {
        // Quiet: the default hook would print the test's own panic.
        std::panic::set_hook(Box::new(|_| {}));
        let panicked = std::panic::catch_unwind(|| -> Result<(), Failure> { panic!("boom") });
        let _ = std::panic::take_hook();
        assert_eq!(exit_code(panicked), 2);
        assert_eq!(exit_code(Ok(Ok(()))), 0);
        assert_eq!(exit_code(Ok(Err(Failure::User(anyhow::anyhow!("no"))))), 1);
        assert_eq!(
            exit_code(Ok(Err(Failure::Config(anyhow::anyhow!("bad"))))),
            64
        );
        let text = bug_text("boom", Some("src/x.rs:3"), "main", false);
        assert!(
            text.starts_with("bug: modelship ")
                && text.contains("panicked in thread `main` at src/x.rs:3: boom")
                && text.ends_with("output of RUST_BACKTRACE=1\n"),
            "{text}"
        );
        assert!(!bug_text("boom", None, "t", true).contains("hint:"));
    }

    #[test]
    fn hints_come_after_the_whole_chain() {
        let e = anyhow::anyhow!("connection refused")
            .context("cannot reach the control plane\nhint: start it with `modelship up`")
            .context("deploy failed");
        assert_eq!(
            super::chain_text(&e),
            "error: deploy failed\n  caused by: cannot reach the control plane\n  caused by: connection refused\nhint: start it with `modelship up`\n"
        );
    }
}
