//! Per-container samples from cgroup v2: every cgroup whose directory names a container id
//! (Docker's `docker-<id>.scope` or `docker/<id>`, containerd's `cri-containerd-<id>.scope`,
//! CRI-O's `crio-<id>.scope`, Podman's `libpod-<id>.scope`) gives CPU (usage, user, system,
//! throttling), memory (current and working set) and IO bytes, read as the kernel writes them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Kind, Samples};
use crate::containers::{DockerContainers, KubeletLinks};

pub struct CgroupCollector {
    root: PathBuf,
    docker: DockerContainers,
    kubelet: KubeletLinks,
    /// Containers neither names, and when they were last looked for: pod sandboxes have no
    /// link, and must not make every round read the links again.
    unnamed: HashMap<String, Instant>,
}

/// A container neither Docker nor the kubelet names is looked for again after this (its link
/// may come a moment after its cgroup).
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// How deep below the root containers are looked for (Kubernetes nests them four deep).
const MAX_DEPTH: usize = 8;
/// Cgroup directories visited in one round at most, so a huge hierarchy cannot stall the agent.
const MAX_DIRS: usize = 20_000;

impl CgroupCollector {
    pub fn new(root: &str, docker_root: &str, kubelet_links: &str) -> Self {
        Self {
            root: PathBuf::from(root),
            docker: DockerContainers::new(docker_root),
            kubelet: KubeletLinks::new(kubelet_links),
            unnamed: HashMap::new(),
        }
    }

    pub fn collect(&mut self, samples: &mut Samples) -> Result<(), String> {
        let containers = find_containers(&self.root)?;
        let alive: HashSet<String> = containers.iter().map(|(id, _)| id.clone()).collect();
        self.docker.retain(&alive);
        self.unnamed.retain(|id, _| alive.contains(id));
        let named: Vec<_> = containers
            .iter()
            .map(|(id, _)| self.docker.get(id, false))
            .collect();
        let now = Instant::now();
        let unknown: Vec<&String> = named
            .iter()
            .zip(&containers)
            .filter(|(docker, (id, _))| docker.is_none() && self.kubelet.get(id).is_none())
            .map(|(_, (id, _))| id)
            .collect();
        // The kubelet's links are read again only for a container not looked for lately.
        if unknown.iter().any(|id| {
            self.unnamed
                .get(*id)
                .is_none_or(|at| now.duration_since(*at) >= LOOK_AGAIN)
        }) {
            self.kubelet.refresh();
            for id in unknown {
                if self.kubelet.get(id).is_none() {
                    self.unnamed.insert(id.clone(), now);
                }
            }
        }
        for (docker, (id, dir)) in named.into_iter().zip(containers) {
            let info = docker.unwrap_or_default();
            let pod = self.kubelet.get(&id);
            let name = match (&pod, info.name.is_empty()) {
                (Some(pod), true) => pod.container.as_str(),
                _ => info.name.as_str(),
            };
            let labels = [
                ("container_id", id.as_str()),
                ("container_name", name),
                ("image", info.image.as_str()),
                (
                    "namespace",
                    pod.as_ref().map_or("", |p| p.namespace.as_str()),
                ),
                ("pod", pod.as_ref().map_or("", |p| p.pod.as_str())),
            ];
            let labels: Vec<(&str, &str)> =
                labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            container_samples(&dir, &labels, samples);
        }
        Ok(())
    }
}

/// The container cgroups under `root`, as (container id, directory).
fn find_containers(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    std::fs::read_dir(root).map_err(|e| format!("cgroup root {}: {e}", root.display()))?;
    // Every cgroup v2 directory has it; cgroup v1's hierarchies (a directory per controller)
    // and a hybrid host's top do not, and their files would give partial samples.
    if !root.join("cgroup.controllers").exists() {
        return Err(format!(
            "cgroup root {}: not a cgroup v2 hierarchy (no cgroup.controllers); cgroup v1 is \
             not read (on a hybrid host, [agent.metrics] cgroup_root = \"/sys/fs/cgroup/unified\")",
            root.display()
        ));
    }
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // A cgroup removed while we walk.
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            visited += 1;
            if visited > MAX_DIRS {
                return Err(format!(
                    "cgroup root {}: more than {MAX_DIRS} cgroups; stopped looking",
                    root.display()
                ));
            }
            let name = entry.file_name();
            match container_id(&name.to_string_lossy()) {
                // A container's own sub-cgroups are part of it: not looked into.
                Some(id) => found.push((id.to_owned(), entry.path())),
                None if depth < MAX_DEPTH => stack.push((entry.path(), depth + 1)),
                None => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The 64-hex-digit container id a cgroup directory's name holds, if any.
fn container_id(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    // CRI-O and Podman give each container's monitor (conmon) a scope named after the container:
    // taken for the container, it would be a second series with the same labels.
    if stem.contains("-conmon-") {
        return None;
    }
    let id = stem.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn container_samples(dir: &Path, labels: &[(&str, &str)], samples: &mut Samples) {
    let cpu = read(dir, "cpu.stat");
    let stat = |key: &str| cpu.as_deref().and_then(|text| keyed(text, key));
    // Divided, not multiplied by 1e-6: the quotient is the closest double to the decimal.
    let usec = 1e6;
    for (name, help, key, divisor) in [
        (
            "sluice_container_cpu_usage_seconds_total",
            "CPU time the container used",
            "usage_usec",
            usec,
        ),
        (
            "sluice_container_cpu_user_seconds_total",
            "CPU time the container used in user mode",
            "user_usec",
            usec,
        ),
        (
            "sluice_container_cpu_system_seconds_total",
            "CPU time the container used in kernel mode",
            "system_usec",
            usec,
        ),
        (
            "sluice_container_cpu_periods_total",
            "CFS enforcement periods that elapsed while the container ran",
            "nr_periods",
            1.0,
        ),
        (
            "sluice_container_cpu_throttled_periods_total",
            "CFS periods in which the container was throttled",
            "nr_throttled",
            1.0,
        ),
        (
            "sluice_container_cpu_throttled_seconds_total",
            "Time the container was throttled",
            "throttled_usec",
            usec,
        ),
    ] {
        if let Some(value) = stat(key) {
            samples.push(name, Kind::Counter, help, labels, value / divisor);
        }
    }
    let current = read(dir, "memory.current").and_then(|t| t.trim().parse::<f64>().ok());
    if let Some(current) = current {
        samples.push(
            "sluice_container_memory_usage_bytes",
            Kind::Gauge,
            "Memory the container uses, page cache included",
            labels,
            current,
        );
        // As cAdvisor and the kubelet count it: what the kernel could not reclaim at once.
        // Without memory.stat (the container going away) there is none: the usage would
        // show as a spike.
        let inactive = read(dir, "memory.stat").and_then(|t| keyed(&t, "inactive_file"));
        if let Some(inactive) = inactive {
            samples.push(
                "sluice_container_memory_working_set_bytes",
                Kind::Gauge,
                "Memory the container uses, less inactive page cache",
                labels,
                (current - inactive).max(0.0),
            );
        }
    }
    if let Some(io) = read(dir, "io.stat") {
        let (read_bytes, written) = io_bytes(&io);
        samples.push(
            "sluice_container_io_read_bytes_total",
            Kind::Counter,
            "Bytes the container read from block devices",
            labels,
            read_bytes,
        );
        samples.push(
            "sluice_container_io_write_bytes_total",
            Kind::Counter,
            "Bytes the container wrote to block devices",
            labels,
            written,
        );
    }
}

/// A cgroup file; `None` when its controller is off for the cgroup (or it just went away).
fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// The value of `key` in a flat-keyed file (`key value` a line), as cpu.stat and memory.stat are.
fn keyed(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Read and written bytes over every device in io.stat (`MAJ:MIN rbytes=.. wbytes=.. ...`).
fn io_bytes(text: &str) -> (f64, f64) {
    let (mut read, mut written) = (0.0, 0.0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read += v.parse::<f64>().unwrap_or(0.0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            written += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    (read, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_every_runtime_naming() {
        let id = "0123456789abcdef".repeat(4);
        for name in [
            format!("docker-{id}.scope"),
            id.clone(),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("libpod-{id}.scope"),
        ] {
            assert_eq!(container_id(&name), Some(id.as_str()), "{name}");
        }
        for name in [
            "system.slice",
            "docker.service",
            "init.scope",
            "kubepods-pod1.slice",
            &format!("crio-conmon-{id}.scope"),
            &format!("libpod-conmon-{id}.scope"),
        ] {
            assert_eq!(container_id(name), None, "{name}");
        }
    }

    /// Without memory.stat (a container going away) there is no working set, rather than
    /// the whole usage shown as one.
    #[test]
    fn no_working_set_without_memory_stat() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "1000\n").unwrap();
        let names = |samples: &Samples| -> Vec<String> {
            samples.out.iter().map(|s| s.name.to_string()).collect()
        };
        let mut samples = Samples::new(0);
        container_samples(dir.path(), &[], &mut samples);
        assert_eq!(names(&samples), ["sluice_container_memory_usage_bytes"]);
        std::fs::write(dir.path().join("memory.stat"), "inactive_file 300\n").unwrap();
        let mut samples = Samples::new(0);
        container_samples(dir.path(), &[], &mut samples);
        assert_eq!(
            samples.out[1].name,
            "sluice_container_memory_working_set_bytes"
        );
        assert_eq!(samples.out[1].value, 700.0);
    }

    /// A cgroup v1 tree (a directory per controller) is refused whole, not read in part.
    #[test]
    fn cgroup_v1_is_said_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("cpu,cpuacct/docker").join("ab".repeat(32));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpu.stat"), "nr_periods 5\nnr_throttled 1\n").unwrap();
        let error = find_containers(dir.path()).unwrap_err();
        assert!(error.contains("not a cgroup v2 hierarchy"), "{error}");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        assert_eq!(find_containers(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn io_bytes_sum_over_devices() {
        let text = "8:0 rbytes=100 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n\
                    259:0 rbytes=5 wbytes=1 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(io_bytes(text), (105.0, 21.0));
    }
}
