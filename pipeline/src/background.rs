//! Work beside the engine's loop: a checkpoint's encoding and its history files, which take a
//! core for seconds, run at a lower scheduling priority and yield it to the loop and the
//! scoring threads when both want it, so the windows' closes keep their latency. A short task
//! that must be done before the next close (a checkpoint's states made its own) runs at the
//! loop's priority.

/// Nice value of the background threads (the SQL service's query threads use the same).
const BACKGROUND_NICE: i32 = 10;

/// Runs `f` on a thread of its own at [`BACKGROUND_NICE`] and waits for its result. `None`
/// when the thread could not be started or `f` panicked.
pub(crate) async fn run<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    spawn(name, true, f).await
}

/// [`run`] at the caller's priority.
pub(crate) async fn run_now<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    spawn(name, false, f).await
}

async fn spawn<T: Send + 'static>(name: &str, lower: bool, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if lower {
                lower_priority();
            }
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

/// Lowers the calling thread's priority (Linux sets it per thread; elsewhere it would apply to
/// the process, so it is left alone).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `who` 0 is the calling thread on Linux.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE);
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_on_a_thread_of_its_own_and_a_panic_is_none() {
        let caller = std::thread::current().id();
        let other = super::run("vigil-test", move || std::thread::current().id() != caller).await;
        assert_eq!(other, Some(true));
        let panicked: Option<()> = super::run("vigil-test", || panic!("encoding failed")).await;
        assert_eq!(panicked, None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_a_lower_priority() {
        // SAFETY: getpriority reads the calling thread's nice value.
        let nice = super::run("vigil-test", || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }).await;
        assert_eq!(nice, Some(super::BACKGROUND_NICE));
        // SAFETY: as above.
        let (caller, now) = (unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, super::run_now("vigil-test", || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }).await);
        assert_eq!(now, Some(caller), "run_now keeps the caller's priority");
    }
}
