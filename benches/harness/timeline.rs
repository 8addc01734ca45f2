//! `BENCH_LATENCY_TIMELINE=1`: where a latency phase's slow outcomes fall in
//! time, beside what each process's threads did then. The outcomes are
//! counted, not printed one by one: printing each slow outcome took CPU from
//! the broker and junction, which made more outcomes slow (BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::measure::{thread_cpu_seconds, Latency};

/// How long each line of the timeline covers.
const STEP: Duration = Duration::from_millis(250);
/// An outcome slower than this is counted as slow.
const SLOW_MS: i64 = 150;

/// Each process's threads' CPU seconds so far, by thread name, at a moment.
struct Sample {
    at_ms: i64,
    threads: Vec<HashMap<String, f64>>,
}

pub struct Timeline {
    names: Vec<&'static str>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Vec<Sample>>,
}

impl Timeline {
    /// Starts sampling the processes' threads every `STEP`, when
    /// `BENCH_LATENCY_TIMELINE` is set; `None` otherwise.
    pub fn start(processes: &[(&'static str, Option<u32>)]) -> Option<Timeline> {
        std::env::var_os("BENCH_LATENCY_TIMELINE")?;
        let pids: Vec<Option<u32>> = processes.iter().map(|(_, pid)| *pid).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                let at_ms = junction::time::now_ms();
                samples.push(Sample { at_ms, threads: pids.iter().map(|pid| thread_cpu_seconds(*pid)).collect() });
                std::thread::sleep(STEP);
            }
            samples
        });
        Some(Timeline { names: processes.iter().map(|(name, _)| *name).collect(), stop, sampler })
    }

    /// Prints one line per step: the outcomes whose deciding step was sent
    /// in it, how many of them were slow and the slowest, and each process's
    /// cores with its three busiest threads.
    pub fn print(self, latency: &Latency) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.sampler.join().unwrap();
        let Some(first) = samples.first() else { return };
        let step_ms = STEP.as_millis() as i64;
        let mut outcomes = vec![(0usize, 0usize, 0i64); samples.len()];
        for &(sent, ms) in &latency.by_sent {
            let Ok(i) = usize::try_from((sent - first.at_ms) / step_ms) else { continue };
            let Some(bucket) = outcomes.get_mut(i) else { continue };
            bucket.0 += 1;
            bucket.1 += usize::from(ms > SLOW_MS);
            bucket.2 = bucket.2.max(ms);
        }
        eprintln!("timeline: from the first step sent; outcomes (slow > {SLOW_MS} ms, slowest ms); cores by process");
        for (i, pair) in samples.windows(2).enumerate() {
            let seconds = (pair[1].at_ms - pair[0].at_ms) as f64 / 1000.0;
            let (count, slow, slowest) = outcomes[i];
            let mut line =
                format!("+{:5.2}s {count:5} ({slow:5}, {slowest:4})", (pair[0].at_ms - first.at_ms) as f64 / 1000.0);
            for (p, name) in self.names.iter().enumerate() {
                let mut used: Vec<(&String, f64)> = pair[1].threads[p]
                    .iter()
                    .map(|(thread, now)| {
                        (thread, (now - pair[0].threads[p].get(thread).copied().unwrap_or(0.0)) / seconds)
                    })
                    .collect();
                let total: f64 = used.iter().map(|(_, cores)| cores).sum();
                used.sort_by(|a, b| b.1.total_cmp(&a.1));
                let busiest: Vec<String> = used
                    .iter()
                    .take(3)
                    .filter(|(_, cores)| *cores >= 0.04)
                    .map(|(thread, cores)| format!("{thread} {cores:.2}"))
                    .collect();
                line += &format!(" | {name} {total:.2} ({})", busiest.join(", "));
            }
            eprintln!("{line}");
        }
    }
}
