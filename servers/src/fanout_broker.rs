//! The broker between the fan-out approach's API servers and its gateways: Redis pub/sub
//! (a real `redis-server`, one channel per session), or the same semantics inside one
//! process for the all-in-one server. Either way a message published to a channel no one
//! is subscribed to is gone, as in Redis.
//!
//! Beside the channel, the broker keeps one fact per session: the count its answer ended
//! with (a key with a 5-minute expiry in Redis). A client whose WebSocket broke while
//! its answer ended would otherwise wait for an end that was published to no one; a
//! gateway it reconnects to reads the count and sends the end. No server keeps state.

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How long [`Broker::redis`] waits for a Redis that is starting.
pub const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long Redis keeps an answer's end count.
pub const END_TTL_SECS: u64 = 300;

/// A session's channel name.
pub fn channel(session: &str) -> String {
    format!("lab:session:{session}")
}

/// The key of a session's end count.
fn end_key(session: &str) -> String {
    format!("lab:session:{session}:end")
}

/// Where messages go.
#[derive(Clone)]
pub enum Broker {
    /// Redis pub/sub: one multiplexed connection publishes; each subscription has a
    /// connection of its own.
    Redis(Box<Redis>),
    /// In this process: the all-in-one server's.
    Local(Arc<Local>),
}

/// A Redis connection for publishing, and the client that opens subscriptions.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    publisher: redis::aio::MultiplexedConnection,
}

/// The in-process broker: subscribers by channel, and answers' end counts by session.
#[derive(Default)]
pub struct Local {
    subs: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>,
    ends: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Broker::Redis(_) => "Broker::Redis",
            Broker::Local(_) => "Broker::Local",
        })
    }
}

/// A subscription: the channel's messages, in order, until it is dropped.
pub enum Subscription {
    Redis(redis::aio::PubSubStream),
    Local {
        rx: mpsc::UnboundedReceiver<String>,
        _guard: LocalGuard,
    },
}

/// Removes a local subscriber's closed sender from its channel when dropped.
pub struct LocalGuard {
    local: Arc<Local>,
    channel: String,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.local.subs.lock()
            && let Some(v) = m.get_mut(&self.channel)
        {
            v.retain(|s| !s.is_closed());
            if v.is_empty() {
                m.remove(&self.channel);
            }
        }
    }
}

fn poisoned<T>(_: T) -> anyhow::Error {
    anyhow::anyhow!("the in-process broker's lock is poisoned")
}

impl Broker {
    /// The in-process broker.
    pub fn local() -> Broker {
        Broker::Local(Default::default())
    }

    /// Redis at `url` (`redis://host:port`), connected now. A Redis that starts beside
    /// this process is waited for, up to [`CONNECT_WAIT`]; then the error names the URL.
    pub async fn redis(url: &str) -> Result<Broker> {
        let client = redis::Client::open(url)
            .with_context(|| format!("'{url}' is not a Redis URL; give redis://HOST:PORT"))?;
        let t0 = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(20);
        let publisher = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => break c,
                Err(e) if t0.elapsed() < CONNECT_WAIT => {
                    tracing::debug!("Redis at {url} not there yet: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot connect to Redis at {url} (tried for {} s)",
                            CONNECT_WAIT.as_secs()
                        )
                    });
                }
            }
        };
        Ok(Broker::Redis(Box::new(Redis { client, publisher })))
    }

    /// Publishes `msg` on `channel`.
    pub async fn publish(&self, channel: &str, msg: &str) -> Result<()> {
        match self {
            Broker::Redis(r) => {
                let mut c = r.publisher.clone();
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(msg)
                    .query_async::<i64>(&mut c)
                    .await
                    .context("Redis PUBLISH")?;
            }
            Broker::Local(l) => {
                let m = l.subs.lock().map_err(poisoned)?;
                for s in m.get(channel).into_iter().flatten() {
                    let _ = s.send(msg.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Subscribes to `channel`; what is published after this returns is received.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        match self {
            Broker::Redis(r) => {
                let mut ps = r
                    .client
                    .get_async_pubsub()
                    .await
                    .context("connect to Redis to subscribe")?;
                ps.subscribe(channel).await.context("Redis SUBSCRIBE")?;
                Ok(Subscription::Redis(ps.into_on_message()))
            }
            Broker::Local(l) => {
                let (tx, rx) = mpsc::unbounded_channel();
                l.subs
                    .lock()
                    .map_err(poisoned)?
                    .entry(channel.to_owned())
                    .or_default()
                    .push(tx);
                Ok(Subscription::Local {
                    rx,
                    _guard: LocalGuard {
                        local: l.clone(),
                        channel: channel.to_owned(),
                    },
                })
            }
        }
    }

    /// Publishes `msgs` on `channel`, in order: to Redis in one round trip.
    pub async fn publish_all(&self, channel: &str, msgs: &[String]) -> Result<()> {
        match self {
            Broker::Redis(r) => {
                let mut c = r.publisher.clone();
                let mut p = redis::pipe();
                for m in msgs {
                    p.cmd("PUBLISH").arg(channel).arg(m).ignore();
                }
                p.query_async::<()>(&mut c).await.context("Redis PUBLISH")?;
            }
            Broker::Local(l) => {
                let m = l.subs.lock().map_err(poisoned)?;
                for s in m.get(channel).into_iter().flatten() {
                    for msg in msgs {
                        let _ = s.send(msg.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the count session `session`'s answer ended with (before its end is
    /// published).
    pub async fn set_end(&self, session: &str, count: u64) -> Result<()> {
        match self {
            Broker::Redis(r) => {
                let mut c = r.publisher.clone();
                redis::cmd("SET")
                    .arg(end_key(session))
                    .arg(count)
                    .arg("EX")
                    .arg(END_TTL_SECS)
                    .query_async::<()>(&mut c)
                    .await
                    .context("Redis SET")?;
            }
            Broker::Local(l) => {
                l.ends
                    .lock()
                    .map_err(poisoned)?
                    .insert(session.to_owned(), count);
            }
        }
        Ok(())
    }

    /// The count session `session`'s answer ended with, if it has ended.
    pub async fn end_of(&self, session: &str) -> Result<Option<u64>> {
        match self {
            Broker::Redis(r) => {
                let mut c = r.publisher.clone();
                redis::cmd("GET")
                    .arg(end_key(session))
                    .query_async::<Option<u64>>(&mut c)
                    .await
                    .context("Redis GET")
            }
            Broker::Local(l) => Ok(l.ends.lock().map_err(poisoned)?.get(session).copied()),
        }
    }

    /// Forgets a deleted session's end count.
    pub async fn forget(&self, session: &str) -> Result<()> {
        match self {
            Broker::Redis(r) => {
                let mut c = r.publisher.clone();
                redis::cmd("DEL")
                    .arg(end_key(session))
                    .query_async::<i64>(&mut c)
                    .await
                    .context("Redis DEL")?;
            }
            Broker::Local(l) => {
                l.ends.lock().map_err(poisoned)?.remove(session);
            }
        }
        Ok(())
    }
}

impl Subscription {
    /// The next message; None when the broker connection ended.
    pub async fn next(&mut self) -> Option<String> {
        match self {
            Subscription::Redis(s) => {
                let m = s.next().await?;
                Some(String::from_utf8_lossy(m.get_payload_bytes()).into_owned())
            }
            Subscription::Local { rx, .. } => rx.recv().await,
        }
    }

    /// A message that has already arrived, without waiting for one.
    pub fn ready(&mut self) -> Option<String> {
        match self {
            Subscription::Redis(s) => {
                let m = s.next().now_or_never()??;
                Some(String::from_utf8_lossy(m.get_payload_bytes()).into_owned())
            }
            Subscription::Local { rx, .. } => rx.try_recv().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_messages_reach_subscribers_only_after_they_subscribe() {
        let b = Broker::local();
        b.publish("c", "before").await.unwrap();
        let mut s1 = b.subscribe("c").await.unwrap();
        let mut s2 = b.subscribe("c").await.unwrap();
        b.publish("c", "one").await.unwrap();
        b.publish("other", "no").await.unwrap();
        assert_eq!(s1.next().await.as_deref(), Some("one"));
        assert_eq!(s2.next().await.as_deref(), Some("one"));
        drop(s1);
        drop(s2);
        let Broker::Local(l) = &b else { panic!() };
        assert!(
            l.subs.lock().unwrap().is_empty(),
            "dropped subscriptions are removed"
        );
    }

    #[tokio::test]
    async fn an_end_count_is_kept_until_the_session_is_forgotten() {
        let b = Broker::local();
        assert_eq!(b.end_of("s").await.unwrap(), None);
        b.set_end("s", 42).await.unwrap();
        assert_eq!(b.end_of("s").await.unwrap(), Some(42));
        assert_eq!(b.end_of("t").await.unwrap(), None);
        b.forget("s").await.unwrap();
        assert_eq!(b.end_of("s").await.unwrap(), None);
    }
}
