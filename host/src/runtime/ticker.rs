//! The epoch ticker: advances every loaded handler's engine's epoch, the
//! clock request deadlines are checked against inside wasm code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances; the granularity of request timeouts.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Advances every loaded handler's engine's epoch every [`EPOCH_TICK`]
/// until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    /// Weak, so that a dropped handler's engine is freed and forgotten.
    engines: Arc<Mutex<Vec<EngineWeak>>>,
}

impl EpochTicker {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engines: Arc<Mutex<Vec<EngineWeak>>> = Arc::default();
        let (flag, watched) = (stop.clone(), engines.clone());
        std::thread::Builder::new()
            .name("pycage-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let mut engines = watched.lock().unwrap_or_else(|e| e.into_inner());
                    engines.retain(|weak| match weak.upgrade() {
                        Some(engine) => {
                            engine.increment_epoch();
                            true
                        }
                        None => false,
                    });
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop, engines }
    }

    pub(crate) fn watch(&self, engine: &Engine) {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines.push(engine.weak());
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
