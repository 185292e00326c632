//! A thread's scheduling priority on Linux: its nice value and its time slice.
//!
//! The node serves the premium tier on its own endpoint and thread, and the simulator sends
//! premium traffic from its own threads. Both raise those threads' priority so premium
//! requests are not queued behind shared-tier work when the CPU is saturated:
//!
//! - a **nice** value below 0 gives the thread a larger share of the CPU (needs root or
//!   `CAP_SYS_NICE`);
//! - a short **slice** (Linux 6.12 and later, EEVDF scheduler) gives it an early deadline, so
//!   it preempts a running thread when it wakes instead of waiting for that thread's slice
//!   (the default slice is 0.7 ms times 1 + log2(CPUs), which every hop of a request may wait
//!   for). Any user may shorten its own threads' slices.
//!
//! [`raise_this_thread`] asks for both and reports what the kernel granted.
//!
//! ```
//! // Raising nice (lowering priority) needs no privilege.
//! std::thread::spawn(|| {
//!     let before = priority::this_thread_nice();
//!     priority::set_this_thread_nice(before + 1).expect("allowed");
//!     assert_eq!(priority::this_thread_nice(), before + 1);
//! })
//! .join()
//! .expect("thread");
//! ```
//!
//! Besides `counting-alloc`, this is the only crate of the workspace with `unsafe` code: libc
//! calls with integer arguments or a plain struct.

#![allow(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::time::Duration;

/// The shortest slice the kernel accepts.
pub const SLICE_MIN: Duration = Duration::from_micros(100);

/// What [`raise_this_thread`] obtained.
#[derive(Debug)]
pub struct Raised {
    /// The nice value was set (or none was asked for).
    pub nice: io::Result<()>,
    /// The slice was set and reads back as asked (or none was asked for). An older kernel
    /// accepts and ignores it: that reads back as not set.
    pub slice: io::Result<()>,
}

impl Raised {
    /// Why something was refused, if anything was.
    pub fn refusal(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Err(e) = &self.nice {
            why.push(format!("nice: {e}"));
        }
        if let Err(e) = &self.slice {
            why.push(format!("slice: {e}"));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Sets the calling thread's nice value (`nice`, -20 highest priority ..= 19; 0 leaves it)
/// and its slice (`slice`, at least [`SLICE_MIN`]; `None` leaves it). On Linux both are per
/// thread; other threads of the process are unaffected.
pub fn raise_this_thread(nice: i32, slice: Option<Duration>) -> Raised {
    let nice_result = if nice == 0 {
        Ok(())
    } else {
        set_this_thread_nice(nice)
    };
    let slice_result = match slice {
        None => Ok(()),
        Some(s) => set_this_thread_slice(s),
    };
    Raised {
        nice: nice_result,
        slice: slice_result,
    }
}

/// Sets the calling thread's nice value.
pub fn set_this_thread_nice(nice: i32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers and touch no memory
        // of ours.
        let r =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Err(unsupported())
    }
}

/// The calling thread's nice value (0 where it cannot be read).
pub fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; -1 is a valid answer, so errno is cleared first and read after.
        unsafe {
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
            if n == -1 && *libc::__errno_location() != 0 {
                0
            } else {
                n
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// `struct sched_attr`, first version (48 bytes), as `sched_setattr(2)` defines it.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

#[cfg(target_os = "linux")]
fn get_attr() -> io::Result<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: the kernel writes at most `size_of::<SchedAttr>()` bytes into `a`, which we
    // own and pass with that size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            libc::gettid(),
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(a)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the calling thread's slice (EEVDF, Linux 6.12 and later), keeping its policy and
/// nice value. Fails on a thread under a real-time policy, and when the kernel ignores it.
pub fn set_this_thread_slice(slice: Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let slice = slice.max(SLICE_MIN);
        let mut a = get_attr()?;
        if a.policy != libc::SCHED_OTHER as u32 && a.policy != libc::SCHED_BATCH as u32 {
            return Err(io::Error::other("the thread is not under SCHED_OTHER"));
        }
        a.size = std::mem::size_of::<SchedAttr>() as u32;
        a.flags = 0;
        a.runtime = slice.as_nanos() as u64;
        // SAFETY: the kernel reads `a.size` bytes from `a`, which we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                libc::gettid(),
                &a as *const SchedAttr,
                0 as libc::c_uint,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        match this_thread_slice() {
            Some(s) if s == Duration::from_nanos(a.runtime) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel ignores custom slices (Linux 6.12 or later needed)",
            )),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        Err(unsupported())
    }
}

/// The calling thread's slice as the kernel reports it (`None` where it cannot be read).
pub fn this_thread_slice() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        get_attr().ok().map(|a| Duration::from_nanos(a.runtime))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "thread priorities are only set on Linux",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_is_per_thread() {
        let mine = this_thread_nice();
        std::thread::spawn(move || {
            set_this_thread_nice(mine + 2).expect("raising nice needs no privilege");
            assert_eq!(this_thread_nice(), mine + 2);
        })
        .join()
        .expect("thread");
        assert_eq!(
            this_thread_nice(),
            mine,
            "another thread's change leaked here"
        );
    }

    #[test]
    fn a_slice_reads_back_or_is_reported_as_ignored() {
        std::thread::spawn(|| {
            let nice = this_thread_nice();
            match set_this_thread_slice(Duration::from_micros(250)) {
                Ok(()) => assert_eq!(this_thread_slice(), Some(Duration::from_micros(250))),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}"),
            }
            // Setting the slice keeps the nice value.
            assert_eq!(this_thread_nice(), nice);
            // Below the minimum is raised to it.
            if set_this_thread_slice(Duration::from_micros(1)).is_ok() {
                assert_eq!(this_thread_slice(), Some(SLICE_MIN));
            }
        })
        .join()
        .expect("thread");
    }
}
