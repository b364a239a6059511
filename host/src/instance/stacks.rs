//! Fiber stacks for guest calls, kept and reused instead of mapped per call.
//!
//! Every async call into a guest runs on a fiber stack of its own. Without
//! a pool wasmtime maps a fresh one (2 MiB and a guard page) per call and
//! unmaps it afterwards: syscalls, page faults as the call first touches
//! it, and a TLB shootdown across cores at every unmap. Like wasmtime's
//! own pooling allocator by default, reused stacks are not zeroed: guest
//! code cannot address the native stack, only wasmtime's own frames do.

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use wasmtime::{StackCreator, StackMemory};

use crate::instance::memory::page_size;

/// Shared by every handler's engine: stacks do not belong to a handler.
#[derive(Clone)]
pub(crate) struct StackPool(Arc<Idle>);

struct Idle {
    stacks: Mutex<Vec<Stack>>,
    max_idle: usize,
}

impl StackPool {
    /// Keeps at most `max_idle` stacks mapped while no call uses them.
    pub(crate) fn new(max_idle: usize) -> Self {
        StackPool(Arc::new(Idle {
            stacks: Mutex::new(Vec::new()),
            max_idle,
        }))
    }
}

/// One mapping: a guard page at the bottom, the stack above it.
struct Stack {
    mapping: NonNull<u8>,
    /// Usable bytes above the guard page.
    size: usize,
}

// SAFETY: a stack is owned by one fiber at a time; the pointer is only the
// address of a mapping this value owns.
unsafe impl Send for Stack {}
unsafe impl Sync for Stack {}

impl Stack {
    fn new(size: usize) -> wasmtime::Result<Stack> {
        let page = page_size();
        let size = size.next_multiple_of(page);
        // SAFETY: a fresh anonymous mapping that nothing else uses.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size + page,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(wasmtime::format_err!(
                "mapping a fiber stack: {}",
                std::io::Error::last_os_error()
            ));
        }
        let stack = Stack {
            mapping: NonNull::new(ptr.cast()).expect("mmap succeeded"),
            size,
        };
        // SAFETY: the part above the guard page of the mapping just made.
        let rc = unsafe {
            libc::mprotect(
                stack.mapping.as_ptr().add(page).cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(wasmtime::format_err!(
                "protecting a fiber stack: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(stack)
    }

    fn bottom(&self) -> usize {
        self.mapping.as_ptr() as usize + page_size()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` made.
        unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.size + page_size()) };
    }
}

// SAFETY: each stack handed out is page aligned, `size` usable bytes with
// a PROT_NONE guard page below, and used by one fiber until dropped.
unsafe impl StackCreator for StackPool {
    fn new_stack(&self, size: usize, zeroed: bool) -> wasmtime::Result<Box<dyn StackMemory>> {
        let wanted = size.next_multiple_of(page_size());
        let reused = {
            let mut idle = self.0.stacks.lock().unwrap_or_else(|e| e.into_inner());
            idle.iter()
                .rposition(|s| s.size == wanted)
                .map(|at| idle.swap_remove(at))
        };
        let stack = match reused {
            Some(stack) => {
                if zeroed {
                    // SAFETY: the stack's usable bytes, owned by us.
                    unsafe { std::ptr::write_bytes(stack.bottom() as *mut u8, 0, stack.size) };
                }
                stack
            }
            None => Stack::new(size)?,
        };
        Ok(Box::new(PooledStack {
            stack: Some(stack),
            pool: self.0.clone(),
        }))
    }
}

struct PooledStack {
    stack: Option<Stack>,
    pool: Arc<Idle>,
}

impl PooledStack {
    fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("present until dropped")
    }
}

// SAFETY: see `StackCreator for StackPool`.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        let stack = self.stack();
        (stack.bottom() + stack.size) as *mut u8
    }

    fn range(&self) -> Range<usize> {
        let stack = self.stack();
        stack.bottom()..stack.bottom() + stack.size
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let stack = self.stack();
        stack.mapping.as_ptr()..stack.bottom() as *mut u8
    }
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        if let Some(stack) = self.stack.take() {
            let mut idle = self.pool.stacks.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.pool.max_idle {
                idle.push(stack);
            }
        }
    }
}
