//! Host samples: CPU time by mode, load, memory and network from procfs, and the size and free
//! space of the configured filesystems.

use std::path::PathBuf;

use super::{Kind, Samples};

pub struct HostCollector {
    proc_root: PathBuf,
    filesystems: Vec<String>,
    ticks_per_second: f64,
}

/// /proc/stat's CPU columns, in order.
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

impl HostCollector {
    pub fn new(proc_root: &str, filesystems: &[String]) -> Self {
        Self {
            proc_root: PathBuf::from(proc_root),
            filesystems: filesystems.to_vec(),
            ticks_per_second: rustix::param::clock_ticks_per_second() as f64,
        }
    }

    /// Every source that can be read gives its samples; the first that cannot is the error.
    pub fn collect(&mut self, samples: &mut Samples) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut proc = |file: &str| {
            let path = self.proc_root.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| errors.push(format!("{}: {e}", path.display())))
                .ok()
        };
        if let Some(stat) = proc("stat") {
            cpu(&stat, self.ticks_per_second, samples);
        }
        if let Some(loadavg) = proc("loadavg") {
            load(&loadavg, samples);
        }
        if let Some(meminfo) = proc("meminfo") {
            memory(&meminfo, samples);
        }
        if let Some(dev) = proc("net/dev") {
            network(&dev, samples);
        }
        for mountpoint in &self.filesystems {
            match rustix::fs::statvfs(mountpoint.as_str()) {
                Ok(fs) => {
                    let block = fs.f_frsize as f64;
                    let labels = [("mountpoint", mountpoint.as_str())];
                    samples.push(
                        "sluice_host_filesystem_size_bytes",
                        Kind::Gauge,
                        "Size of the filesystem",
                        &labels,
                        fs.f_blocks as f64 * block,
                    );
                    samples.push(
                        "sluice_host_filesystem_avail_bytes",
                        Kind::Gauge,
                        "Space on the filesystem that unprivileged users may still use",
                        &labels,
                        fs.f_bavail as f64 * block,
                    );
                }
                Err(e) => errors.push(format!("filesystem {mountpoint}: {e}")),
            }
        }
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn cpu(stat: &str, ticks_per_second: f64, samples: &mut Samples) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return;
    };
    for (mode, ticks) in CPU_MODES.iter().zip(line.split_whitespace().skip(1)) {
        if let Ok(ticks) = ticks.parse::<f64>() {
            samples.push(
                "sluice_host_cpu_seconds_total",
                Kind::Counter,
                "CPU time of all the host's CPUs, by mode",
                &[("mode", mode)],
                ticks / ticks_per_second,
            );
        }
    }
}

fn load(loadavg: &str, samples: &mut Samples) {
    let names = [
        ("sluice_host_load1", "Load average over 1 minute"),
        ("sluice_host_load5", "Load average over 5 minutes"),
        ("sluice_host_load15", "Load average over 15 minutes"),
    ];
    for ((name, help), value) in names.iter().zip(loadavg.split_whitespace()) {
        if let Ok(value) = value.parse() {
            samples.push(name, Kind::Gauge, help, &[], value);
        }
    }
}

fn memory(meminfo: &str, samples: &mut Samples) {
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(value * 1024.0)
        })
    };
    for (name, help, key) in [
        (
            "sluice_host_memory_total_bytes",
            "Memory the host has",
            "MemTotal",
        ),
        (
            "sluice_host_memory_available_bytes",
            "Memory available to new work without swapping",
            "MemAvailable",
        ),
    ] {
        if let Some(value) = kib(key) {
            samples.push(name, Kind::Gauge, help, &[], value);
        }
    }
}

/// Bytes received and sent per interface, loopback left out.
fn network(dev: &str, samples: &mut Samples) {
    for line in dev.lines().skip(2) {
        let Some((device, counters)) = line.split_once(':') else {
            continue;
        };
        let device = device.trim();
        let counters: Vec<f64> = counters
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        if device == "lo" || counters.len() < 16 {
            continue;
        }
        let labels = [("device", device)];
        samples.push(
            "sluice_host_network_receive_bytes_total",
            Kind::Counter,
            "Bytes received, per network interface",
            &labels,
            counters[0],
        );
        samples.push(
            "sluice_host_network_transmit_bytes_total",
            Kind::Counter,
            "Bytes sent, per network interface",
            &labels,
            counters[8],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(samples: &Samples) -> Vec<(String, Vec<String>, f64)> {
        samples
            .out
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.labels.values().cloned().collect(),
                    s.value,
                )
            })
            .collect()
    }

    #[test]
    fn procfs_files_as_the_kernel_writes_them() {
        let mut samples = Samples::new(0);
        cpu(
            "cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 50 0 25 500 2 0 0 0 0 0\n",
            100.0,
            &mut samples,
        );
        load("0.50 0.25 0.10 1/200 12345\n", &mut samples);
        memory(
            "MemTotal:       2048 kB\nMemFree:         512 kB\nMemAvailable:   1024 kB\n",
            &mut samples,
        );
        network(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     10       1    0    0    0     0          0         0       10       1    0    0    0     0       0          0\n  \
             eth0:   2000      20    0    0    0     0          0         0     3000      30    0    0    0     0       0          0\n",
            &mut samples,
        );
        let got = values(&samples);
        let find = |name: &str, label: &str| {
            got.iter()
                .find(|(n, l, _)| n == name && (label.is_empty() || l.iter().any(|v| v == label)))
                .map(|(_, _, v)| *v)
        };
        assert_eq!(find("sluice_host_cpu_seconds_total", "user"), Some(1.0));
        assert_eq!(find("sluice_host_cpu_seconds_total", "idle"), Some(10.0));
        assert_eq!(find("sluice_host_load5", ""), Some(0.25));
        assert_eq!(
            find("sluice_host_memory_total_bytes", ""),
            Some(2048.0 * 1024.0)
        );
        assert_eq!(
            find("sluice_host_memory_available_bytes", ""),
            Some(1024.0 * 1024.0)
        );
        assert_eq!(
            find("sluice_host_network_receive_bytes_total", "eth0"),
            Some(2000.0)
        );
        assert_eq!(
            find("sluice_host_network_transmit_bytes_total", "eth0"),
            Some(3000.0)
        );
        assert_eq!(find("sluice_host_network_receive_bytes_total", "lo"), None);
    }
}
