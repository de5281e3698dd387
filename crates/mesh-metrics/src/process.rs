//! A process's own CPU and memory, as the standard Prometheus process metrics
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so dashboards
//! show what the controller and each sidecar cost next to what they do.
//!
//! Read from `/proc/self` on each scrape; on systems without it the metrics are
//! simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times: `USER_HZ`, 100 on
/// every Linux architecture (part of the kernel's user-space ABI).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: f64,
    /// Open file descriptors.
    pub open_fds: f64,
}

impl ProcessStats {
    /// Reads this process's numbers; `None` without `/proc`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let mut stats = ProcessStats::parse(&stat, &status)?;
        stats.open_fds = open_fds;
        Some(stats)
    }

    /// Parses `/proc/<pid>/stat` (CPU times) and `/proc/<pid>/status` (memory).
    pub fn parse(stat: &str, status: &str) -> Option<ProcessStats> {
        // The command name (field 2) may contain spaces: count fields after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
        let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
        let cpu_seconds = (ticks(11)? + ticks(12)?) / USER_HZ;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
                .map(|k| k * 1024.0)
        };
        Some(ProcessStats {
            cpu_seconds,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            open_fds: 0.0,
        })
    }
}

/// Encodes [`ProcessStats`] on every scrape; register it on the root registry (the
/// names are the standard unprefixed ones).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent, seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size, bytes",
                stats.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, bytes",
                stats.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", stats.open_fds),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (mesh (contr)) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 100 200000000 3000 18446744073709551615";
        let status = "Name:\tmesh-controller\nVmSize:\t  200000 kB\nVmRSS:\t   12000 kB\n";
        let s = ProcessStats::parse(stat, status).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 12000.0 * 1024.0);
        assert_eq!(s.virtual_bytes, 200000.0 * 1024.0);
        assert_eq!(ProcessStats::parse("no paren", status), None);
        assert_eq!(ProcessStats::parse(stat, "VmSize: 1 kB\n"), None);
    }

    #[test]
    fn this_process_has_cpu_and_memory() {
        let s = ProcessStats::read().expect("/proc is mounted");
        assert!(s.resident_bytes > 0.0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds >= 1.0);
    }
}
