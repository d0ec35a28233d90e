//! `modelship build -f SPEC`: the deployment's OCI image, daemonless —
//! optimized as the spec asks (cached), then packaged into an OCI layout,
//! exported as a `docker load` archive, or pushed to a registry.
//! `modelship probe URL`: the image's health check (it has no curl).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use modelship_control::package;
use modelship_package::{Layout, Reference};
use modelship_types::Bytes;
use serde::Serialize;

use crate::{Failure, print_output, spec::read_spec};

#[derive(clap::Args)]
pub struct Args {
    /// The deployment spec.
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// Write the image into this OCI layout directory (created or added to).
    #[arg(long, group = "destination")]
    oci_dir: Option<PathBuf>,
    /// Write the image as a tar that `docker load` reads (also an OCI layout).
    #[arg(long, group = "destination")]
    docker_archive: Option<PathBuf>,
    /// Push the image to a registry: `host[:port]/repository[:tag]`.
    #[arg(long, group = "destination")]
    push: Option<String>,
    /// The image's name; `modelship/<name>:<digest prefix>` by default.
    #[arg(long)]
    tag: Option<String>,
    /// Where optimized models are cached (shared with `modelship up`).
    #[arg(long, env = "MODELSHIP_DATA_DIR", default_value = ".modelship")]
    data_dir: PathBuf,
    /// The `modelship` executable to package; this one by default.
    #[arg(long)]
    runtime: Option<PathBuf>,
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
    /// Package what symbolic links leaving the model directory point to
    /// (a Hugging Face cache's snapshot), instead of refusing them.
    #[arg(long)]
    follow_links: bool,
}

#[derive(Serialize)]
struct Built {
    reference: String,
    manifest: String,
    config: String,
    layers: Vec<modelship_package::LayerReport>,
    total_bytes: u64,
    written: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed: Option<modelship_package::push::Pushed>,
    seconds: f64,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let started = Instant::now();
    let spec = read_spec(&args.spec)?;
    build(args, spec, started).map_err(Failure::User)
}

fn build(
    args: Args,
    spec: modelship_types::ModelDeployment,
    started: Instant,
) -> anyhow::Result<()> {
    let say = |line: &str| {
        if std::io::stderr().is_terminal() {
            eprintln!("{line}");
        }
    };
    let runtime = match args.runtime {
        Some(r) => r,
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let rt = async_runtime()?;
    let layout_dir = args
        .oci_dir
        .clone()
        .unwrap_or_else(|| package::images_dir(&args.data_dir));
    let (layout, image) = build_into(
        &rt,
        &spec,
        &args.data_dir,
        &layout_dir,
        runtime,
        args.follow_links,
        &say,
    )?;
    let reference = match (&args.push, &args.tag) {
        (Some(r), _) | (None, Some(r)) if has_tag(r) => Reference::parse(r)?,
        (Some(r), _) | (None, Some(r)) => package::reference(r, &image)?,
        (None, None) => {
            package::reference(&package::local_repository(&spec.metadata.name), &image)?
        }
    };
    layout.tag(&image.manifest, &reference.to_string())?;
    let mut pushed = None;
    let written = if let Some(path) = &args.docker_archive {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        modelship_package::archive::write(
            &layout,
            &image,
            &reference,
            std::io::BufWriter::new(file),
        )?;
        format!("docker archive {}", path.display())
    } else if args.push.is_some() {
        say(&format!("pushing {reference}…"));
        let credentials = modelship_package::push::Credentials::from_env();
        pushed = Some(rt.block_on(modelship_package::push::push(
            &layout,
            &image,
            &reference,
            credentials,
        ))?);
        format!("pushed to {reference}")
    } else {
        format!("OCI layout {}", layout_dir.display())
    };
    let built = Built {
        reference: reference.to_string(),
        manifest: image.manifest.digest.clone(),
        config: image.config.digest.clone(),
        layers: image.report(),
        total_bytes: image.total_size(),
        written,
        pushed,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_output(args.output == "json", &built, |b| {
        let mut out = format!("{}\n  manifest {}\n", b.reference, b.manifest);
        for l in &b.layers {
            out += &format!(
                "  {:<10} {:>10}  {}\n",
                l.role,
                Bytes(l.size).to_string(),
                l.digest
            );
        }
        out += &format!("  total      {:>10}\n", Bytes(b.total_bytes).to_string());
        if let Some(p) = &b.pushed {
            out += &format!(
                "  {} blob(s) uploaded ({}), {} already in the registry\n",
                p.uploaded.len(),
                Bytes(p.uploaded_bytes),
                p.skipped.len()
            );
        }
        out += &format!("{} in {:.1}s\n", b.written, b.seconds);
        out
    });
    Ok(())
}

pub(crate) fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Optimizes (cached in `data_dir`) and builds `spec`'s image into the OCI
/// layout at `layout_dir`.
fn build_into(
    rt: &tokio::runtime::Runtime,
    spec: &modelship_types::ModelDeployment,
    data_dir: &std::path::Path,
    layout_dir: &std::path::Path,
    runtime: PathBuf,
    follow_links: bool,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Layout, modelship_package::BuiltImage)> {
    say("optimizing (cached when built before)…");
    let artifact = rt.block_on(modelship_control::optimized_model(data_dir, spec))?;
    // The plan deploy records for the revision (no nodes: the image holds
    // what one replica needs, not where it runs).
    let plan = modelship_control::plan::plan_artifact(spec, &artifact.path, &[])?;
    let image_spec = package::image_spec(
        spec,
        &artifact,
        &plan.replica,
        runtime,
        package::source_date_epoch()?,
        follow_links,
    )?;
    let layout = Layout::open(layout_dir)?;
    let image = modelship_package::build(&image_spec, &layout, &mut |step| {
        say(&format!("writing the {step}…"))
    })?;
    Ok((layout, image))
}

/// The reference `modelship build` gives `spec`'s image (building it into
/// `data_dir` to learn its digest): the spec's repository, or
/// `modelship/<name>`, tagged with the digest's prefix.
pub fn reference_of(
    spec: &modelship_types::ModelDeployment,
    data_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let (_, image) = build_into(
        &async_runtime()?,
        spec,
        data_dir,
        &package::images_dir(data_dir),
        exe,
        false,
        &|_| {},
    )?;
    let repository = spec
        .spec
        .image
        .clone()
        .unwrap_or_else(|| package::local_repository(&spec.metadata.name));
    Ok(package::reference(&repository, &image)?.to_string())
}

/// Does `r` end in `:tag` (a `:` after the last `/`)?
fn has_tag(r: &str) -> bool {
    r.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// The URL to GET; a 2xx answer within the timeout is healthy.
    url: String,
    #[arg(long, default_value_t = 2)]
    timeout_s: u64,
}

/// Exits 0 when `url` answers 2xx; the image's health check.
pub fn probe(args: ProbeArgs) -> Result<(), Failure> {
    let status = async_runtime()?.block_on(async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout_s))
            .build()?
            .get(&args.url)
            .send()
            .await
            .map(|r| r.status())
    });
    match status {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) => Err(Failure::User(anyhow::anyhow!("{} answered {s}", args.url))),
        Err(e) => Err(Failure::User(
            anyhow::Error::new(e).context(format!("cannot reach {}", args.url)),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_are_after_the_last_slash() {
        assert!(super::has_tag("localhost:5000/a:v1"));
        assert!(!super::has_tag("localhost:5000/a"));
        assert!(super::has_tag("a:v1"));
    }
}
