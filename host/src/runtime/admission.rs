//! Admission control: how many instances may be live at once, runtime-wide
//! and per handler, and how long a request may wait for a place.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::DispatchError;

/// Admission control: a request needs one of the handler's own permits (if
/// it has a concurrency limit) and one runtime-wide instance slot. Waiting
/// is bounded so that overload turns into a quick 503, never a pile-up of
/// instances and their memories.
pub(crate) struct Gate {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) own: Option<Arc<Semaphore>>,
    pub(crate) queue_timeout: Duration,
}

impl Gate {
    pub(crate) async fn enter(
        &self,
    ) -> Result<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit), DispatchError> {
        let acquire = async {
            let own = match &self.own {
                Some(own) => Some(own.clone().acquire_owned().await.expect("never closed")),
                None => None,
            };
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            (own, slot)
        };
        tokio::time::timeout(self.queue_timeout, acquire)
            .await
            .map_err(|_| DispatchError::Overloaded {
                waited: self.queue_timeout,
            })
    }
}
