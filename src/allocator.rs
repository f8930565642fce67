//! The process's allocator and how it is tuned at start.
//!
//! mimalloc is the global allocator (see the workspace manifest); the `system-allocator` feature
//! leaves the C allocator in place, for heap profilers. [`tune`] runs first thing in `main`.

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tunes the allocator for the engine's pattern: every poll allocates batches about as large as
/// the last one's, which were just freed.
///
/// - Freed pages are returned to the kernel after a second rather than 10 ms, so each poll's
///   batches reuse the last one's pages instead of faulting in zeroed ones (measured: the
///   kernel's page zeroing was a third of `vigil bench`'s time).
/// - Transparent huge pages are turned off for the process. mimalloc asks for them on its
///   arenas (`MADV_HUGEPAGE`), and where the kernel honours that request (the common
///   `madvise` setting), a first touch of a 2 MiB region zeroes, and may compact memory for,
///   the whole huge page, and a purge splits it again. Measured on the 5-million-event file
///   bench: the engine 13% faster (1.14-1.18 s against 1.30-1.37 s), its kernel time 0.10-0.17 s
///   against 0.35-0.39 s, and the whole command's 2.5-3.9 s of system time down to 0.8 s.
///
/// mimalloc's own variables (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ALLOW_THP`), when set, are left
/// to decide: `MIMALLOC_ALLOW_THP=1` keeps huge pages. An error is the kernel's refusal of the
/// last, which only costs speed.
pub fn tune() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc's own option is read once, before `main`, when its first arena is already
        // mapped; the process-wide flag applies at every later page fault, to every mapping.
        // SAFETY: PR_SET_THP_DISABLE takes an integer argument and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
