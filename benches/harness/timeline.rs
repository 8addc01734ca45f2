//! `BENCH_LATENCY_TIMELINE=1`: where a latency phase's slow outcomes fall in
//! time, beside what each process's threads did then. The outcomes are
//! counted, not printed one by one: printing each slow outcome took CPU from
//! the broker and junction, which made more outcomes slow (BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::measure::{thread_cpu, Latency, ThreadCpu};

/// How long each line of the timeline covers.
const STEP: Duration = Duration::from_millis(250);
/// An outcome slower than this is counted as slow.
const SLOW_MS: i64 = 150;

/// Whether the latency phases are to be followed in time.
pub fn wanted() -> bool {
    std::env::var_os("BENCH_LATENCY_TIMELINE").is_some()
}

/// Each process's threads' CPU seconds so far, by thread ID, at a moment.
struct Sample {
    at_ms: i64,
    threads: Vec<HashMap<u32, ThreadCpu>>,
}

/// The outcomes whose deciding step was sent in one step of the timeline.
#[derive(Default, Clone, Copy)]
struct Outcomes {
    count: usize,
    slow: usize,
    slowest_ms: i64,
}

pub struct Timeline {
    names: Vec<&'static str>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Vec<Sample>>,
}

impl Timeline {
    /// Starts sampling the processes' threads every `STEP`, on fixed
    /// deadlines, when [`wanted`]; `None` otherwise.
    pub fn start(processes: &[(&'static str, Option<u32>)]) -> Option<Timeline> {
        if !wanted() {
            return None;
        }
        let pids: Vec<Option<u32>> = processes.iter().map(|(_, pid)| *pid).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stopping.load(Ordering::SeqCst) {
                let at_ms = junction::time::now_ms();
                samples.push(Sample { at_ms, threads: pids.iter().map(|pid| thread_cpu(*pid)).collect() });
                next += STEP;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            samples
        });
        Some(Timeline { names: processes.iter().map(|(name, _)| *name).collect(), stop, sampler })
    }

    /// Prints, under `title`, one line per step from the sampler's start:
    /// the outcomes whose deciding step was sent in it, how many of them
    /// were slow and the slowest, and each process's cores with its three
    /// busiest threads (by name; a thread that ended within a step is not
    /// counted in it).
    pub fn print(self, title: &str, latency: &Latency) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.sampler.join().unwrap();
        let Some(first) = samples.first() else { return };
        let mut outcomes = vec![Outcomes::default(); samples.len().saturating_sub(1)];
        for &(sent, ms) in &latency.by_sent {
            // The step whose start is the last sample at or before `sent`.
            let Some(i) = samples.partition_point(|s| s.at_ms <= sent).checked_sub(1) else { continue };
            let Some(step) = outcomes.get_mut(i) else { continue };
            step.count += 1;
            step.slow += usize::from(ms > SLOW_MS);
            step.slowest_ms = step.slowest_ms.max(ms);
        }
        eprintln!("timeline of {title}: outcomes (slow > {SLOW_MS} ms, slowest ms); cores by process");
        for (pair, step) in samples.windows(2).zip(outcomes) {
            let seconds = ((pair[1].at_ms - pair[0].at_ms) as f64 / 1000.0).max(0.001);
            let mut line = format!(
                "+{:5.2}s {:5} ({:5}, {:4})",
                (pair[0].at_ms - first.at_ms) as f64 / 1000.0,
                step.count,
                step.slow,
                step.slowest_ms
            );
            for (p, name) in self.names.iter().enumerate() {
                let mut by_name: HashMap<&str, f64> = HashMap::new();
                for (tid, now) in &pair[1].threads[p] {
                    let before = pair[0].threads[p].get(tid).map_or(0.0, |t| t.seconds);
                    *by_name.entry(&now.name).or_insert(0.0) += (now.seconds - before).max(0.0) / seconds;
                }
                let total: f64 = by_name.values().sum();
                let mut busiest: Vec<(&str, f64)> = by_name.into_iter().filter(|(_, cores)| *cores >= 0.04).collect();
                busiest.sort_by(|a, b| b.1.total_cmp(&a.1));
                let busiest: Vec<String> =
                    busiest.iter().take(3).map(|(thread, cores)| format!("{thread} {cores:.2}")).collect();
                line += &format!(" | {name} {total:.2} ({})", busiest.join(", "));
            }
            eprintln!("{line}");
        }
    }
}
