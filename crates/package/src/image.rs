//! Building an image: the three layers, the image config and the manifest,
//! written into a [`Layout`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use flate2::Compression;
use serde::Serialize;
use serde_json::json;

use crate::layer::{self, Files, Layer, Source};
use crate::layout::{Blob, Layout};
use crate::{PackageError, elf, media};

/// Where the binary lives in the image.
pub const RUNTIME_BIN: &str = "/usr/local/bin/modelship";
/// Where the model's files live in the image.
pub const MODEL_DIR: &str = "/models";
/// The user replicas run as (distroless's `nonroot`).
pub const USER_ID: u32 = 65532;
/// Where the deployment layer puts its one file.
const DEPLOYMENT_FILE: &str = "/etc/modelship/deployment.json";
/// Where shared libraries are looked for, as the dynamic loader would on
/// Debian and most x86-64 distributions.
const LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The `modelship` executable to run.
    pub runtime: PathBuf,
    /// The model file or directory, placed under [`MODEL_DIR`].
    pub model: PathBuf,
    /// The deployment layer's JSON (spec, plan, evaluation).
    pub deployment: serde_json::Value,
    /// Arguments after [`RUNTIME_BIN`].
    pub cmd: Vec<String>,
    /// The port the server listens on inside the container.
    pub port: u16,
    /// Image labels (the config's) and manifest annotations.
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch stamped on files and the config
    /// (`SOURCE_DATE_EPOCH`); 0 by default, so builds are reproducible.
    pub created: u64,
    /// Package what symbolic links that leave the model directory point to
    /// (a Hugging Face cache's snapshot links into its blobs), instead of
    /// refusing them.
    pub follow_links: bool,
}

impl ImageSpec {
    /// The model's path inside the image.
    pub fn model_in_image(model: &Path) -> String {
        let name = model
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        format!("{MODEL_DIR}/{name}")
    }
}

/// A layer's part in the image, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub role: &'static str,
    pub digest: String,
    /// Bytes as stored and pulled (gzipped).
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<(&'static str, Layer)>,
}

impl BuiltImage {
    pub fn report(&self) -> Vec<LayerReport> {
        self.layers
            .iter()
            .map(|(role, l)| LayerReport {
                role,
                digest: l.blob.digest.clone(),
                size: l.blob.size,
            })
            .collect()
    }

    /// Manifest, config and layers: the bytes a pull transfers.
    pub fn total_size(&self) -> u64 {
        self.manifest.size
            + self.config.size
            + self.layers.iter().map(|(_, l)| l.blob.size).sum::<u64>()
    }
}

/// Builds the image into `layout`; `progress` hears of each layer.
pub fn build(
    spec: &ImageSpec,
    layout: &Layout,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, PackageError> {
    progress("runtime layer");
    let runtime = layer::write(
        layout,
        &runtime_files(&spec.runtime)?,
        spec.created,
        Compression::default(),
    )?;
    progress("model layer");
    // Weights barely compress (quantized blocks least of all): the fastest
    // level saves nearly as much as the default at a fraction of the time.
    let model = layer::write(
        layout,
        &model_files(&spec.model, spec.follow_links)?,
        spec.created,
        Compression::fast(),
    )?;
    progress("deployment layer");
    let mut deployment = Files::default();
    let json = serde_json::to_vec_pretty(&spec.deployment).expect("JSON values serialize");
    deployment.file(DEPLOYMENT_FILE, Source::Bytes(json), 0o644);
    let deployment = layer::write(layout, &deployment, spec.created, Compression::default())?;
    let layers = vec![
        ("runtime", runtime),
        ("model", model),
        ("deployment", deployment),
    ];

    let config = config_json(spec, &layers);
    let config = layout.put(
        &serde_json::to_vec(&config).expect("JSON values serialize"),
        media::CONFIG,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::MANIFEST,
        "config": config,
        "layers": layers.iter().map(|(_, l)| &l.blob).collect::<Vec<_>>(),
        "annotations": spec.labels,
    });
    let manifest = layout.put(
        &serde_json::to_vec(&manifest).expect("JSON values serialize"),
        media::MANIFEST,
    )?;
    Ok(BuiltImage {
        manifest,
        config,
        layers,
    })
}

fn config_json(spec: &ImageSpec, layers: &[(&'static str, Layer)]) -> serde_json::Value {
    let created = rfc3339(spec.created);
    let port = format!("{}/tcp", spec.port);
    let probe = format!("http://127.0.0.1:{}/v2/health/ready", spec.port);
    json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{USER_ID}:{USER_ID}"),
            "Entrypoint": [RUNTIME_BIN],
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/local/bin", "HOME=/home/modelship"],
            "WorkingDir": "/home/modelship",
            "ExposedPorts": { port: {} },
            "Labels": spec.labels,
            "StopSignal": "SIGTERM",
            // Docker reads this (an extension to the OCI config); the image
            // has no shell or curl, so the binary probes itself.
            "Healthcheck": {
                "Test": ["CMD", RUNTIME_BIN, "probe", probe],
                "Interval": 2_000_000_000u64,
                "Timeout": 1_000_000_000u64,
                "StartPeriod": 60_000_000_000u64,
                "Retries": 3,
            },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(_, l)| &l.diff_id).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|(role, _)| json!({
            "created": created,
            "created_by": format!("modelship build: {role}"),
        })).collect::<Vec<_>>(),
    })
}

/// The binary (stripped), the libraries it loads, a user and a `/tmp`.
fn runtime_files(exe: &Path) -> Result<Files, PackageError> {
    let bytes = std::fs::read(exe).map_err(|source| PackageError::Io {
        what: format!("reading the runtime {}", exe.display()),
        source,
    })?;
    let name = exe.display().to_string();
    let mut files = Files::default();
    for (path, dest) in libraries(&name, &bytes)? {
        files.file(&dest, Source::File(path), 0o755);
    }
    files.file(
        RUNTIME_BIN,
        Source::Bytes(elf::strip(&name, &bytes)?),
        0o755,
    );
    files.file(
        "/etc/passwd",
        Source::Bytes(
            format!("root:x:0:0:root:/root:/sbin/nologin\nmodelship:x:{USER_ID}:{USER_ID}:modelship:/home/modelship:/sbin/nologin\n")
                .into_bytes(),
        ),
        0o644,
    );
    files.file(
        "/etc/group",
        Source::Bytes(format!("root:x:0:\nmodelship:x:{USER_ID}:\n").into_bytes()),
        0o644,
    );
    files.dir("/tmp", 0o1777, 0);
    files.dir("/home/modelship", 0o755, USER_ID);
    Ok(files)
}

/// Each library the executable needs, transitively: (file on this machine,
/// path in the image). The interpreter keeps its exact path.
fn libraries(name: &str, exe: &[u8]) -> Result<Vec<(PathBuf, String)>, PackageError> {
    let linkage = elf::linkage(name, exe)?;
    let mut out = Vec::new();
    if let Some(interp) = &linkage.interpreter {
        out.push((PathBuf::from(interp), interp.clone()));
    }
    let mut queue: Vec<(String, String)> = linkage
        .needed
        .into_iter()
        .map(|n| (n, name.to_owned()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((soname, by)) = queue.pop() {
        if !seen.insert(soname.clone()) {
            continue;
        }
        let found = LIBRARY_DIRS
            .iter()
            .map(|d| Path::new(d).join(&soname))
            .find(|p| p.is_file())
            .ok_or_else(|| PackageError::Library {
                soname: soname.clone(),
                by,
                searched: LIBRARY_DIRS.join(", "),
            })?;
        let bytes = std::fs::read(&found).map_err(|source| PackageError::Io {
            what: format!("reading {}", found.display()),
            source,
        })?;
        let lib = found.display().to_string();
        for n in elf::linkage(&lib, &bytes)?.needed {
            queue.push((n, lib.clone()));
        }
        let dest = found.display().to_string();
        if linkage.interpreter.as_deref() != Some(dest.as_str()) {
            out.push((found, dest));
        }
    }
    Ok(out)
}

/// A model file, or a directory's regular files, under [`MODEL_DIR`].
///
/// What goes into the model layer is what lies inside the model directory:
/// a symbolic link whose target is outside it (a secret linked in by
/// mistake or by an adversary) is refused by name unless `follow_links`,
/// since `--push` would upload it. Links inside it are followed; anything
/// but files, directories and links (a FIFO, a socket) is refused.
fn model_files(model: &Path, follow_links: bool) -> Result<Files, PackageError> {
    let dest = ImageSpec::model_in_image(model);
    let mut files = Files::default();
    if model.is_dir() {
        let root = std::fs::canonicalize(model).map_err(|source| PackageError::Io {
            what: format!("resolving the model directory {}", model.display()),
            source,
        })?;
        let walk = Walk {
            root: &root,
            follow_links,
        };
        walk.dir(
            &mut files,
            model,
            &dest,
            &mut Vec::new(),
            &mut HashSet::new(),
        )?;
    } else {
        files.file(&dest, Source::File(model.to_owned()), 0o644);
    }
    Ok(files)
}

struct Walk<'a> {
    /// The model directory, resolved.
    root: &'a Path,
    follow_links: bool,
}

impl Walk<'_> {
    /// Adds `dir` under `dest`. `open` holds the resolved directories being
    /// walked, so a link back to one of them is a loop, refused; `seen`
    /// every one walked, so links cannot make a directory's content count
    /// twice (or, chained, 2^n times).
    fn dir(
        &self,
        files: &mut Files,
        dir: &Path,
        dest: &str,
        open: &mut Vec<PathBuf>,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<(), PackageError> {
        let reading = |source| PackageError::Io {
            what: format!("reading the model directory {}", dir.display()),
            source,
        };
        let resolved = std::fs::canonicalize(dir).map_err(reading)?;
        if open.contains(&resolved) {
            return Err(refused(dir, "links back to a directory that contains it"));
        }
        if !seen.insert(resolved.clone()) {
            return Err(refused(
                dir,
                "is a second way into a directory already packaged",
            ));
        }
        open.push(resolved);
        let mut entries = std::fs::read_dir(dir)
            .map_err(reading)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(reading)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let dest = format!("{dest}/{name}");
            let kind = entry.file_type().map_err(reading)?;
            if kind.is_symlink() {
                let target = std::fs::canonicalize(&path)
                    .map_err(|_| refused(&path, "is a link to nothing"))?;
                if !target.starts_with(self.root) && !self.follow_links {
                    return Err(refused(
                        &path,
                        "links outside the model directory (`modelship build --follow-links` packages what it points to)",
                    ));
                }
            }
            // Follows links: the checks above decided they may be.
            let meta = std::fs::metadata(&path).map_err(reading)?;
            if meta.is_dir() {
                self.dir(files, &path, &dest, open, seen)?;
            } else if meta.is_file() {
                // The resolved path, not the link: what was checked is what
                // the layer reads, even if the link changes meanwhile.
                let target = std::fs::canonicalize(&path).map_err(reading)?;
                files.file(&dest, Source::File(target), 0o644);
            } else {
                return Err(refused(&path, "is not a regular file or directory"));
            }
        }
        open.pop();
        Ok(())
    }
}

fn refused(path: &Path, why: &str) -> PackageError {
    PackageError::Refused {
        path: path.to_owned(),
        reason: why.to_owned(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths a model directory puts into the layer, or the error.
    fn packaged(model: &Path, follow_links: bool) -> Result<Vec<String>, String> {
        let files = model_files(model, follow_links).map_err(|e| e.to_string())?;
        Ok(files.paths().map(str::to_owned).collect())
    }

    #[test]
    fn links_that_leave_the_model_directory_are_refused_by_name() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a private key").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("id_rsa"), b"another").unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        // A link that stays inside is packaged as its target's content.
        symlink("../config.json", model.join("sub/alias.json")).unwrap();
        let ok = packaged(&model, false).unwrap();
        assert!(
            ok.iter().any(|p| p.ends_with("model/sub/alias.json")),
            "{ok:?}"
        );

        for (link, target) in [("model.safetensors", &secret), ("cache", &outside)] {
            symlink(target, model.join(link)).unwrap();
            let err = packaged(&model, false).unwrap_err();
            assert!(
                err.contains(link) && err.contains("outside the model directory"),
                "{err}"
            );
            assert!(!err.contains("private"), "{err}");
            // Followed when asked.
            let followed = packaged(&model, true).unwrap();
            assert!(followed.iter().any(|p| p.contains(link)), "{followed:?}");
            std::fs::remove_file(model.join(link)).unwrap();
        }

        // Two ways into one directory would package it twice (and chained,
        // 2^n times): refused.
        symlink("sub", model.join("sub2")).unwrap();
        let err = packaged(&model, false).unwrap_err();
        assert!(err.contains("second way"), "{err}");
        std::fs::remove_file(model.join("sub2")).unwrap();

        // A loop and a dangling link are refused, never walked forever.
        symlink(".", model.join("sub/again")).unwrap();
        let err = packaged(&model, false).unwrap_err();
        assert!(err.contains("again") && err.contains("links back"), "{err}");
        std::fs::remove_file(model.join("sub/again")).unwrap();
        symlink("nothing-here", model.join("dangling")).unwrap();
        let err = packaged(&model, false).unwrap_err();
        assert!(err.contains("dangling"), "{err}");
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn libraries_of_this_test_binary_include_libc_and_the_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let libs = libraries("test", &std::fs::read(exe).unwrap()).unwrap();
        let dests: Vec<&str> = libs.iter().map(|(_, d)| d.as_str()).collect();
        assert!(dests.iter().any(|d| d.ends_with("/libc.so.6")), "{dests:?}");
        assert!(dests.iter().any(|d| d.contains("ld-linux")), "{dests:?}");
        assert_eq!(
            dests.len(),
            dests.iter().collect::<std::collections::HashSet<_>>().len()
        );
    }
}
