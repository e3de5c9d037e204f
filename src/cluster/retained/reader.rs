//! Reading the retained messages' stream: an ephemeral pull consumer a query (or the
//! sweep) makes for itself, read a fetch at a time, deleted when done.

use async_nats::jetstream::{consumer, stream};
use futures_util::StreamExt;

use super::{in_time, CONSUMER_IDLE, QUERY_STEP_WAIT};

/// One message of the stream as a query or the sweep reads it.
pub(super) struct Read {
    pub(super) subject: String,
    pub(super) payload: bytes::Bytes,
    pub(super) headers: async_nats::HeaderMap,
    pub(super) sequence: u64,
}

/// Messages one fetch asks for: what a query holds on its way in is at most this many
/// messages (each at most the NATS server's max_payload).
const FETCH_MAX: usize = 16;

/// The messages of the subjects a filter subject covers (the stream keeps one per subject:
/// each is its subject's last), read a fetch at a time from an ephemeral consumer of its
/// own (deleted when done, or by the server when left), from the start or from a sequence.
pub(super) struct LastPerSubject {
    stream: stream::Stream,
    consumer: consumer::Consumer<consumer::pull::Config>,
    pub(super) done: bool,
}

impl LastPerSubject {
    pub(super) async fn open(
        stream: &stream::Stream,
        subject: String,
        from: Option<u64>,
    ) -> Result<LastPerSubject, String> {
        let deliver_policy = match from {
            None => consumer::DeliverPolicy::LastPerSubject,
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        };
        let config = consumer::pull::Config {
            filter_subject: subject,
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: CONSUMER_IDLE,
            memory_storage: true,
            ..Default::default()
        };
        let creating = stream.create_consumer(config);
        let consumer = in_time(creating).await?;
        let done = consumer.cached_info().num_pending == 0;
        Ok(LastPerSubject {
            stream: stream.clone(),
            consumer,
            done,
        })
    }

    /// The next messages, none once every one was read.
    pub(super) async fn next_batch(&mut self) -> Result<Vec<Read>, String> {
        if self.done {
            return Ok(Vec::new());
        }
        let fetching = self.consumer.fetch().max_messages(FETCH_MAX).messages();
        let mut batch = in_time(fetching).await?;
        let mut read = Vec::with_capacity(FETCH_MAX);
        loop {
            let next = tokio::time::timeout(QUERY_STEP_WAIT, batch.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => break,
                Err(_) => return Err("no answer".into()),
            };
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            read.push(Read {
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                headers: message.headers.clone().unwrap_or_default(),
                sequence,
            });
            if pending == 0 {
                self.done = true;
                break;
            }
        }
        self.done |= read.is_empty();
        Ok(read)
    }

    /// Deletes the consumer (in the background: nobody waits for it).
    pub(super) fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        tokio::spawn(async move {
            let deleting = self.stream.delete_consumer(&name);
            let _ = tokio::time::timeout(QUERY_STEP_WAIT, deleting).await;
        });
    }
}
