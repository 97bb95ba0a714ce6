//! Crash points for the crash test: a process started with `PROFILE_GATEWAY_FAILPOINTS`, e.g.
//! `after_upstream_write=0.3,before_finish=0.1`, aborts at those points with those probabilities. Unset
//! (always, in production), every point is a no-op costing one atomic load.

use rand::Rng;
use std::sync::OnceLock;

static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();

fn points() -> &'static [(String, f64)] {
    POINTS.get_or_init(|| {
        std::env::var("PROFILE_GATEWAY_FAILPOINTS")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|p| {
                        let (name, prob) = p.split_once('=')?;
                        Some((name.trim().to_string(), prob.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process (no destructors, no flushing: like a kill) if the point fires.
pub fn hit(name: &str) {
    let Some((_, p)) = points().iter().find(|(n, _)| n == name) else {
        return;
    };
    if rand::thread_rng().gen_bool(p.clamp(0.0, 1.0)) {
        eprintln!("failpoint {name} fired: aborting");
        std::process::abort();
    }
}
