//! Shutdown signalling between the daemon's tasks: one trigger, many
//! waiters. Owns nothing else; which OS signals trigger it is `main`'s
//! business.

use tokio::sync::watch;

/// Fires the shutdown; dropping it fires it too.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Waits for the shutdown. Cheap to clone, one per task.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its first waiter.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the shutdown has been fired (or its trigger dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// [`Shutdown::wait`] as an owned future, for APIs that take one.
    pub async fn wait_owned(mut self) {
        self.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_sees_the_shutdown() {
        let (trigger, shutdown) = channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.clone().wait_owned()))
            .collect();
        trigger.fire();
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        // A late waiter returns at once.
        shutdown.clone().wait().await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_shuts_down() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.wait().await;
    }
}
