//! The `Watch` streams of long work (tests, migrations): the resource as it
//! is, then again each time its row is announced changed, until it ends.
//!
//! One loop for every resource, so that each says only how to read itself,
//! how to show itself and when it has ended. The subscription to changes is
//! taken before the first read, so a change between the two is not missed;
//! a lagging or resynchronised listener reads again rather than skipping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::Status;

use super::status;
use crate::db::Change;
use crate::error::Result;
use crate::state::Controller;

/// A stream of a resource's successive views.
pub type WatchStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// Streams the resource `id`: read by `read`, shown by `render`, again
/// each time `channel` (the `NOTIFY` channel its changes are announced on,
/// with its id as payload) says it changed, until `ended` says nothing more
/// will change (the stream ends after showing it).
pub async fn watch<T, M, Read, Fut, Render, Ended>(
    controller: Arc<Controller>,
    id: String,
    channel: &'static str,
    read: Read,
    render: Render,
    ended: Ended,
) -> std::result::Result<WatchStream<M>, Status>
where
    T: Send + 'static,
    M: Send + 'static,
    Read: Fn(Arc<Controller>, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + Send,
    Render: Fn(&T) -> M + Send + 'static,
    Ended: Fn(&T) -> bool + Send + 'static,
{
    let mut changes = controller.changes.subscribe();
    let first = read(controller.clone(), id.clone()).await.map_err(status)?;
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut current = first;
        loop {
            if sender.send(Ok(render(&current))).await.is_err() {
                return;
            }
            if ended(&current) {
                return;
            }
            loop {
                match changes.recv().await {
                    Ok(Change::Notified {
                        channel: announced,
                        payload,
                    }) if announced == channel && payload == id => {
                        break;
                    }
                    Ok(Change::Resynchronise) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        break;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            match read(controller.clone(), id.clone()).await {
                Ok(next) => current = next,
                Err(error) => {
                    let _ = sender.send(Err(status(error))).await;
                    return;
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        receiver,
    )))
}
