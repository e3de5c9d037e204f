//! What the link publishes: the shards' messages to NATS, retained messages to JetStream
//! as they go, and the shards' questions to the retained task (`retained.rs`).

use std::future::IntoFuture;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Link, PUBLISH_WAIT};
use crate::cluster::retained::{self, Work};
use crate::cluster::sessions;
use crate::cluster::stored;
use crate::cluster::{wire, Outgoing, ToLink};

impl Link {
    pub(super) async fn publish(&mut self, batch: &mut Vec<ToLink>) {
        let now = Instant::now();
        // NATS away and the client's own queue full: what is not taken by then is dropped
        // and counted, so that the link goes on (and stops when asked).
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        for item in batch.drain(..) {
            match item {
                ToLink::Publish(out) => self.publish_one(out, now, deadline).await,
                ToLink::Find(query) => self.hand_retained(Work::Query(query)),
                ToLink::Sessions(work) => self.hand_sessions(work),
                ToLink::Fence(reply) => self.fence(reply).await,
            }
        }
    }

    async fn publish_one(&mut self, out: Outgoing, now: Instant, deadline: tokio::time::Instant) {
        let cluster = self.cluster.clone();
        cluster.taken_from_queue(&out);
        let sendable = self.sendable(&out, now);
        if out.durable {
            // Done in order with the shard's other stores even when it cannot be sent: its
            // publisher's acknowledgement waits for that (`stored.rs`).
            self.hand_store(&out, sendable.clone());
        } else if let Some(bytes) = &sendable {
            self.publish_core(out.subject.clone(), bytes.clone(), deadline)
                .await;
        }
        if let (true, Some(bytes)) = (out.message.retain, sendable) {
            // Stored without the share groups served: they are this moment's.
            let stored = match out.served.is_empty() {
                true => Some(bytes),
                false => wire::encode(&out.message, out.origin, out.number, now),
            };
            if let Some(stored) = stored {
                self.store_retained(&out.message, stored, deadline).await;
            }
        }
    }

    /// `out` encoded for NATS, if it can go: `None` (counted, said) if NATS would refuse
    /// it.
    fn sendable(&self, out: &Outgoing, now: Instant) -> Option<bytes::Bytes> {
        let cluster = &self.cluster;
        let stats = &cluster.stats;
        // Encoded here, not on the shard: the expiry left is counted up to now.
        if out.served.len() > wire::SERVED_MAX {
            stats.served_cut.fetch_add(1, Ordering::Relaxed);
        }
        let encoded = wire::encode_served(&out.message, out.origin, out.number, &out.served, now);
        let Some(bytes) = encoded else {
            stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let max_payload = self.client.server_info().max_payload;
        (cluster.max_payload).store(max_payload, Ordering::Relaxed);
        if max_payload > 0 && bytes.len() > max_payload {
            // NATS refuses it (max_payload, 1 MB by default): said, counted.
            if let Some(seen) = crate::cluster::count_to_say(&stats.too_large) {
                log::warn!(
                    "Warning: cluster: a message to '{}' ({} bytes) is larger than NATS takes ({max_payload} bytes, its max_payload); not sent to the other nodes ({seen} so far).",
                    out.message.topic,
                    bytes.len()
                );
            }
            if out.message.retain {
                retained::not_stored(cluster, "larger than NATS takes");
            }
            return None;
        }
        Some(bytes)
    }

    /// To the stores' task (`stored.rs`), in order; `bytes` `None`: only its place in the
    /// order, for its acknowledgement.
    fn hand_store(&mut self, out: &Outgoing, bytes: Option<bytes::Bytes>) {
        let store = stored::Store {
            shard: usize::from(out.origin.shard & !super::super::STORED_ORIGIN),
            number: out.number,
            subject: out.subject.clone(),
            id: stored::message_id(out.origin, out.number),
            bytes,
            qos: out.message.qos as u8,
            handed: tokio::time::Instant::now(),
            held: out.message.held_bytes(),
            message: out.message.clone(),
        };
        let sent = match &self.stores {
            Some(stores) => stores.send(store).map_err(|e| e.0),
            None => Err(store),
        };
        if let Err(store) = sent {
            // No task (the link is stopping): done all the same, so that its
            // acknowledgement does not wait for ever.
            let cluster = &self.cluster;
            cluster.store_done(&self.mailboxes, store.shard, store.number, store.held);
        }
    }

    /// Stores a fence in the messages' stream once the subscriptions noted so far are made
    /// (NATS takes a connection's commands in order, and a server passes a subscription on
    /// to the others before what its client publishes after): its sequence to `reply`.
    async fn fence(&mut self, reply: oneshot::Sender<Result<u64, String>>) {
        self.reconcile().await;
        let js = async_nats::jetstream::new(self.client.clone());
        let subject = stored::fence_subject(&self.cluster);
        let storing = js.publish(subject, bytes::Bytes::new());
        let ack = match tokio::time::timeout(PUBLISH_WAIT, storing).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                let _ = reply.send(Err(e.to_string()));
                return;
            }
            Err(_) => {
                let _ = reply.send(Err("the NATS client is stuck".into()));
                return;
            }
        };
        tokio::spawn(async move {
            let stored = crate::cluster::within(stored::TRY_WAIT, ack.into_future()).await;
            let _ = reply.send(stored.map(|ack| ack.sequence));
        });
    }

    /// On core NATS: at most once to the other nodes.
    async fn publish_core(
        &mut self,
        subject: String,
        bytes: bytes::Bytes,
        deadline: tokio::time::Instant,
    ) {
        let stats = &self.cluster.stats;
        let len = bytes.len() as u64;
        let publishing = self.client.publish(subject, bytes);
        match tokio::time::timeout_at(deadline, publishing).await {
            Ok(Ok(())) => {
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                stats.forwarded_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                if let Some(seen) = crate::cluster::count_to_say(&stats.dropped_outgoing) {
                    log::warn!(
                        "Warning: cluster: a publish to NATS failed: {e} ({seen} dropped so far)."
                    );
                }
            }
        }
    }

    /// Stores a retained message (or with an empty payload its removal) in JetStream; its
    /// acknowledgement is waited for by the retained task, in order with the queries.
    async fn store_retained(
        &mut self,
        message: &crate::router::Message,
        bytes: bytes::Bytes,
        deadline: tokio::time::Instant,
    ) {
        let Some((js, _)) = &self.retained else {
            return;
        };
        let Some(subject) = retained::subject(&self.cluster, &message.topic) else {
            return; // Kept on its node (`Cluster::keeps_retained`).
        };
        let (payload, headers) = if message.payload.is_empty() {
            (bytes::Bytes::new(), async_nats::HeaderMap::new())
        } else {
            (bytes, retained::headers(message))
        };
        let storing = js.publish_with_headers(subject, headers, payload);
        match tokio::time::timeout_at(deadline, storing).await {
            Ok(Ok(ack)) => self.hand_retained(Work::Stored(ack, retained::ack_deadline())),
            Ok(Err(e)) => retained::not_stored(&self.cluster, &e.to_string()),
            Err(_) => retained::not_stored(&self.cluster, "the NATS client is stuck"),
        }
    }

    /// To the sessions task; a claim it has no room for is answered at once: the
    /// connection goes on without the cluster (said and counted).
    fn hand_sessions(&mut self, work: sessions::Work) {
        let Some(to_task) = &self.sessions else {
            return;
        };
        if let Err(e) = to_task.try_send(work) {
            match e.into_inner() {
                sessions::Work::Claim(ask) => {
                    let why = "too many claims under way";
                    let claimed = sessions::unclaimed(&self.cluster, &ask.client_id, why);
                    let msg = crate::router::ShardMsg::ClusterClaimed {
                        conn: ask.conn,
                        token: ask.token,
                        client_id: ask.client_id,
                        claimed,
                    };
                    self.hand(ask.shard, msg, 0);
                }
                sessions::Work::Record { record, .. } => {
                    self.cluster.record_taken(&record);
                    let stats = &self.cluster.stats;
                    stats.records_not_written.fetch_add(1, Ordering::Relaxed);
                }
                sessions::Work::Release { client_id, .. }
                | sessions::Work::Verify { client_id, .. } => {
                    log::debug!(
                        "Cluster: the key of {client_id} stays: the sessions task is behind."
                    );
                }
            }
        }
    }

    fn hand_retained(&mut self, work: Work) {
        let Some((_, to_task)) = &self.retained else {
            return;
        };
        if let Err(e) = to_task.try_send(work) {
            match e.into_inner() {
                Work::Stored(..) => {
                    retained::not_stored(&self.cluster, "too many acknowledgements waited for")
                }
                Work::Query(query) => {
                    let stats = &self.cluster.stats;
                    stats
                        .retained_queries_failed
                        .fetch_add(1, Ordering::Relaxed);
                    log::warn!("Warning: cluster: too many retained queries under way; those of '{}' are not looked for.", query.filter);
                }
            }
        }
    }
}
