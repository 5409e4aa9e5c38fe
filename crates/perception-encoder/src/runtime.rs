//! Process set-up the CLI, the server and the benchmarks share: the heap's behaviour around
//! large activation buffers, and the worker threads of the kernels and rayon.

/// Keep freed activation buffers in the heap for reuse (call first thing in `main`). By
/// default glibc returns large blocks to the kernel on free, so every layer's output (tens of
/// MB) is page-faulted and zeroed again: 5-10% of a forward pass. One heap for all threads:
/// with a heap per thread, a buffer freed on one worker cannot serve an allocation on another,
/// and loading blocks in parallel then held the float32 originals and their re-laid-out copies
/// at once (3.2 GB instead of 1.8 GB for B16). No effect off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; meant to be called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hand freed heap memory back to the kernel (after a spike such as a very large image, since
/// [`keep_freed_memory`] otherwise keeps the heap at its peak). No effect off glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Use `n` worker threads for the tensor kernels and the rayon pool (call before any work).
/// Returns the thread count in effect.
pub fn set_threads(n: usize) -> usize {
    let n = n.max(1);
    // candle's CPU kernels read RAYON_NUM_THREADS for every call.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    n
}

/// The default thread count: `PE_THREADS`, else `RAYON_NUM_THREADS`, else the available cores.
pub fn default_threads() -> usize {
    ["PE_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&n| n > 0))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
