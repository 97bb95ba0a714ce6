//! Which tokio runtime the process runs on: chosen before anything else starts, from the CPUs it
//! may use, because a runtime cannot change its flavour once built.

use std::fmt;
use std::num::NonZeroUsize;

/// The environment variable that overrides the choice (`current_thread` or `multi_thread`).
pub const ENV: &str = "PROFILE_GATEWAY_RUNTIME";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Every task on the thread that polls the listener: no work stealing, no cross-thread
    /// wake-ups. What a process with one CPU gets anyway, without the multi-thread scheduler's
    /// atomics and queues.
    CurrentThread,
    /// One worker per CPU the process may use (`available_parallelism`, which follows a cgroup
    /// CPU quota), tokio's default.
    MultiThread,
}

impl Flavour {
    /// One CPU: current-thread; more: multi-thread; `PROFILE_GATEWAY_RUNTIME` wins over both.
    pub fn choose(env: Option<&str>, cpus: NonZeroUsize) -> Result<Flavour, String> {
        match env.map(str::trim) {
            None | Some("") | Some("auto") if cpus.get() == 1 => Ok(Flavour::CurrentThread),
            None | Some("") | Some("auto") => Ok(Flavour::MultiThread),
            Some("current_thread") => Ok(Flavour::CurrentThread),
            Some("multi_thread") => Ok(Flavour::MultiThread),
            Some(other) => Err(format!(
                "{ENV}={other:?}: expected auto, current_thread or multi_thread"
            )),
        }
    }

    /// The flavour this process should run on, from its environment and its CPUs.
    pub fn for_this_process() -> Result<Flavour, String> {
        let env = std::env::var(ENV).ok();
        let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        Flavour::choose(env.as_deref(), cpus)
    }

    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Flavour::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavour::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }

    /// The flavour `handle`'s runtime runs (tests run on others than [`Flavour::build`]'s).
    pub fn of(handle: &tokio::runtime::Handle) -> Flavour {
        match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Flavour::CurrentThread,
            _ => Flavour::MultiThread,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::CurrentThread => "current_thread",
            Flavour::MultiThread => "multi_thread",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn one_cpu_runs_on_the_current_thread_and_more_on_workers() {
        assert_eq!(Flavour::choose(None, cpus(1)), Ok(Flavour::CurrentThread));
        assert_eq!(Flavour::choose(None, cpus(2)), Ok(Flavour::MultiThread));
        assert_eq!(
            Flavour::choose(Some("auto"), cpus(1)),
            Ok(Flavour::CurrentThread)
        );
    }

    #[test]
    fn the_environment_overrides_the_cpu_count() {
        assert_eq!(
            Flavour::choose(Some("multi_thread"), cpus(1)),
            Ok(Flavour::MultiThread)
        );
        assert_eq!(
            Flavour::choose(Some("current_thread"), cpus(8)),
            Ok(Flavour::CurrentThread)
        );
    }

    #[test]
    fn an_unknown_flavour_is_refused_by_name() {
        let e = Flavour::choose(Some("work_stealing"), cpus(2)).unwrap_err();
        assert!(
            e.contains("PROFILE_GATEWAY_RUNTIME") && e.contains("work_stealing"),
            "{e}"
        );
    }
}
