//! CPU and memory limits for replica processes through cgroups, v2 or v1,
//! under the control plane's own cgroup. Where neither can be written (no
//! permission, no controllers), replicas run unlimited and [`Cgroups::note`]
//! says why.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// CFS period for v1 quotas and v2 `cpu.max`, in microseconds.
const PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub enum Cgroups {
    /// The unified hierarchy; replicas' groups go under `base`.
    V2 { base: PathBuf },
    /// Separate cpu and memory hierarchies.
    V1 { cpu: PathBuf, memory: PathBuf },
    /// Limits cannot be applied here, and why.
    Unavailable(String),
}

impl Cgroups {
    /// Finds this process's cgroups and checks that a child group can be
    /// made in each.
    pub fn detect() -> Cgroups {
        match Self::find() {
            Ok(c) => match c.check() {
                Ok(()) => c,
                Err(e) => Cgroups::Unavailable(format!("cannot create a cgroup: {e}")),
            },
            Err(reason) => Cgroups::Unavailable(reason),
        }
    }

    fn find() -> Result<Cgroups, String> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no unified cgroup for this process")?;
            return Ok(Cgroups::V2 {
                base: Path::new(ROOT).join(path.trim_start_matches('/')),
            });
        }
        let v1 = |controller: &str| -> Result<PathBuf, String> {
            for line in own.lines() {
                let mut parts = line.splitn(3, ':');
                let (_, list, path) = (parts.next(), parts.next(), parts.next());
                let (Some(list), Some(path)) = (list, path) else {
                    continue;
                };
                if list.split(',').any(|c| c == controller) {
                    for mount in [list, controller] {
                        let dir = Path::new(ROOT).join(mount);
                        if dir.is_dir() {
                            return Ok(dir.join(path.trim_start_matches('/')));
                        }
                    }
                }
            }
            Err(format!("no `{controller}` cgroup controller mounted"))
        };
        Ok(Cgroups::V1 {
            cpu: v1("cpu")?,
            memory: v1("memory")?,
        })
    }

    fn bases(&self) -> Vec<&Path> {
        match self {
            Cgroups::V2 { base } => vec![base],
            Cgroups::V1 { cpu, memory } => vec![cpu, memory],
            Cgroups::Unavailable(_) => vec![],
        }
    }

    fn check(&self) -> io::Result<()> {
        let probe = format!("modelship-probe-{}", std::process::id());
        for base in self.bases() {
            let dir = base.join(&probe);
            fs::create_dir(&dir)?;
            fs::remove_dir(&dir)?;
        }
        Ok(())
    }

    /// Puts process `pid` in a group of its own named after `id`, limited to
    /// `cpu` CPUs and `memory` bytes.
    pub fn apply(
        &self,
        id: &str,
        pid: u32,
        cpu: Option<f64>,
        memory: Option<u64>,
    ) -> io::Result<()> {
        let group = format!("modelship-{id}");
        let quota = cpu.map(|c| ((c * PERIOD_US as f64).round() as u64).max(1_000));
        match self {
            Cgroups::Unavailable(_) => Ok(()),
            Cgroups::V2 { base } => {
                let dir = make(base, &group)?;
                if let Some(q) = quota {
                    fs::write(dir.join("cpu.max"), format!("{q} {PERIOD_US}"))?;
                }
                if let Some(m) = memory {
                    fs::write(dir.join("memory.max"), m.to_string())?;
                }
                fs::write(dir.join("cgroup.procs"), pid.to_string())
            }
            Cgroups::V1 {
                cpu: cpu_base,
                memory: mem_base,
            } => {
                let dir = make(cpu_base, &group)?;
                if let Some(q) = quota {
                    fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                    fs::write(dir.join("cpu.cfs_quota_us"), q.to_string())?;
                }
                fs::write(dir.join("cgroup.procs"), pid.to_string())?;
                let dir = make(mem_base, &group)?;
                if let Some(m) = memory {
                    fs::write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                }
                fs::write(dir.join("cgroup.procs"), pid.to_string())
            }
        }
    }

    /// Removes the replica's groups once its process has exited.
    pub fn remove(&self, id: &str) {
        for base in self.bases() {
            let _ = fs::remove_dir(base.join(format!("modelship-{id}")));
        }
    }

    /// The memory limit in force for replica `id`, as the kernel reports it.
    pub fn memory_limit(&self, id: &str) -> Option<u64> {
        let group = format!("modelship-{id}");
        let file = match self {
            Cgroups::V2 { base } => base.join(group).join("memory.max"),
            Cgroups::V1 { memory, .. } => memory.join(group).join("memory.limit_in_bytes"),
            Cgroups::Unavailable(_) => return None,
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    pub fn note(&self) -> String {
        match self {
            Cgroups::V2 { base } => format!("cgroup v2 under {}", base.display()),
            Cgroups::V1 { cpu, memory } => {
                format!("cgroup v1 under {} and {}", cpu.display(), memory.display())
            }
            Cgroups::Unavailable(why) => format!("not enforced: {why}"),
        }
    }
}

fn make(base: &Path, group: &str) -> io::Result<PathBuf> {
    let dir = base.join(group);
    match fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(dir),
    }
}
