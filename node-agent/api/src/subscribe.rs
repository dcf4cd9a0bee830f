//! The proxy side of the config stream: subscribe, apply each update, answer
//! ACK or NACK, and when the stream breaks, reconnect with backoff and start
//! again from a snapshot.

use std::{path::PathBuf, time::Duration};

use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use prost::Message as _;

use crate::config::{
    Ack, ClientMessage, Hello, Nack, Resource, Update, client_message::Message,
    config_distribution_client::ConfigDistributionClient,
};

/// A resource the proxy could not take, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

/// Moves `update`'s encoded upserts into its decoded ones; those that do
/// not decode are refused (the others are applied, as with any refusal).
fn decode_upserts(update: &mut Update) -> Vec<Refused> {
    let mut refused = Vec::new();
    update.upserts.reserve(update.encoded_upserts.len());
    for encoded in std::mem::take(&mut update.encoded_upserts) {
        match Resource::decode(encoded.clone()) {
            Ok(resource) => update.upserts.push(resource),
            Err(error) => {
                // Passed on without a kind, under its key if that much reads: the
                // handler refuses it and keeps its last good copy (a snapshot
                // would otherwise drop the key as no longer mentioned).
                let key = leading_key(&encoded).unwrap_or_default();
                refused.push(Refused {
                    key: if key.is_empty() {
                        "(undecodable)".into()
                    } else {
                        key.clone()
                    },
                    reason: format!("an encoded resource does not decode: {error}"),
                });
                if !key.is_empty() {
                    update.upserts.push(Resource { key, kind: None });
                }
            }
        }
    }
    refused
}

/// `Resource.key` (field 1, which prost writes first) of an encoding that may not
/// decode as a whole.
fn leading_key(encoded: &[u8]) -> Option<String> {
    let (&0x0a, mut rest) = encoded.split_first()? else {
        return None;
    };
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    String::from_utf8(rest.get(..len)?.to_vec()).ok()
}

/// What a proxy does with updates. It must keep its last good copy of any
/// resource it refuses and apply the others.
pub trait Handler: Send + 'static {
    fn apply(&mut self, update: Update) -> Vec<Refused>;
}

/// How the subscription is doing, for readiness and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub connected: bool,
    /// A snapshot was applied since the last (re)connect.
    pub synced: bool,
    pub version: u64,
    pub reconnects: u64,
}

pub struct Subscriber {
    socket: PathBuf,
    hello: Hello,
    min_backoff: Duration,
    max_backoff: Duration,
    status: watch::Sender<Status>,
}

impl Subscriber {
    pub fn new(socket: PathBuf, hello: Hello) -> Self {
        Subscriber {
            socket,
            // Decoded here, before the handler sees them.
            hello: Hello {
                encoded_resources: true,
                ..hello
            },
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            status: watch::Sender::new(Status::default()),
        }
    }

    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// Follows the subscription's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Runs until the task is dropped: the subscription has no end of its own.
    pub async fn run(self, mut handler: impl Handler) {
        let mut backoff = self.min_backoff;
        loop {
            match self.session(&mut handler).await {
                Ok(()) => {
                    info!(socket = %self.socket.display(), "config stream ended; resubscribing")
                }
                Err(err) => {
                    warn!(socket = %self.socket.display(), error = %err, "config stream failed; resubscribing")
                }
            }
            let synced = self.status.borrow().synced;
            self.status.send_modify(|s| {
                s.connected = false;
                s.synced = false;
                s.reconnects += 1;
            });
            if synced {
                // The stream worked: start over quickly.
                backoff = self.min_backoff;
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// One subscription, from hello to the stream's end.
    async fn session(&self, handler: &mut impl Handler) -> Result<(), tonic::Status> {
        let mut client = ConfigDistributionClient::new(crate::socket::channel(&self.socket))
            .max_decoding_message_size(256 << 20);
        let (tx, rx) = mpsc::channel(16);
        // Cannot fail: the receiver is alive and the queue empty.
        let _ = tx
            .send(ClientMessage {
                message: Some(Message::Hello(self.hello.clone())),
            })
            .await;
        let mut updates = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.status.send_modify(|s| s.connected = true);
        while let Some(mut update) = updates.message().await? {
            let version = update.version;
            let snapshot = update.snapshot;
            let mut refused = decode_upserts(&mut update);
            let (upserts, removals) = (update.upserts.len(), update.removals.len());
            refused.extend(handler.apply(update));
            let answer = if refused.is_empty() {
                debug!(
                    version,
                    snapshot, upserts, removals, "config update applied"
                );
                Message::Ack(Ack { version })
            } else {
                let reason = refused
                    .iter()
                    .map(|r| format!("{}: {}", r.key, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(version, %reason, "config update partly refused");
                Message::Nack(Nack {
                    version,
                    reason,
                    refused: refused.into_iter().map(|r| r.key).collect(),
                })
            };
            self.status.send_modify(|s| {
                s.version = version;
                s.synced |= snapshot;
            });
            if tx
                .send(ClientMessage {
                    message: Some(answer),
                })
                .await
                .is_err()
            {
                return Err(tonic::Status::unavailable("request stream closed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn encoded_upserts_decode_and_garbage_is_refused() {
        let resource = Resource {
            key: "workload/demo/a".into(),
            ..Default::default()
        };
        let mut update = Update {
            encoded_upserts: vec![
                Bytes::from(resource.encode_to_vec()),
                // A length-delimited field 1 claiming more bytes than follow.
                Bytes::from_static(&[0x0a, 0x7f, b'x']),
                // A readable key, then a field claiming more bytes than follow.
                Bytes::from_static(b"\x0a\x01k\x52\x7f"),
            ],
            ..Update::default()
        };
        let refused = decode_upserts(&mut update);
        // The readable key is passed on without a kind, so the handler refuses it
        // and keeps its last good copy.
        assert_eq!(
            update.upserts,
            vec![
                resource,
                Resource {
                    key: "k".into(),
                    kind: None
                }
            ]
        );
        assert!(update.encoded_upserts.is_empty());
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[1].key, "k");
        assert!(
            refused[0].reason.contains("does not decode"),
            "{:?}",
            refused[0]
        );
    }
}
