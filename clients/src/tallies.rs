//! What arrived of an answer whose tokens could be lost on the way: in datagrams
//! (`wt-dgram`), or relayed through a broker while the client's WebSocket was down
//! (`fanout`). Records carry them; reports sum them.

use serde::{Deserialize, Serialize};

/// One answer's datagram tokens.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
pub struct DatagramCounts {
    /// Datagrams the server sent, one per token (its tally on the request stream).
    pub sent: u64,
    /// Their tokens' bytes.
    pub sent_bytes: u64,
    /// Datagrams that arrived before the answer closed.
    pub delivered: u64,
    /// `sent - delivered`: never sent again, or arrived too late.
    pub lost: u64,
    /// Arrived after a datagram with a higher sequence number.
    pub reordered: u64,
}

/// One answer's tokens relayed through a broker (`fanout`).
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
pub struct RelayCounts {
    /// Tokens the API server published (the end message's count).
    pub published: u64,
    /// Tokens that reached the client.
    pub delivered: u64,
    /// Published while the client's WebSocket was down: never delivered.
    pub lost: u64,
    /// Times the client's WebSocket broke and was set up again (through the load
    /// balancer, to any gateway).
    pub reconnects: u32,
    /// Connection attempts those reconnects took (each waits 50 ms, doubling).
    pub reconnect_tries: u32,
}

impl RelayCounts {
    /// Adds another answer's counts.
    pub fn add(&mut self, o: RelayCounts) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.reconnects += o.reconnects;
        self.reconnect_tries += o.reconnect_tries;
    }

    /// The report's sentence on `n` answers' sums.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name}: {} tokens published to the broker, {} delivered, {} lost while a WebSocket was down; {} reconnects ({} connection attempts, from 50 ms apart, doubling). Lost tokens are not sent again; only whole answers' digests are compared.\n\n",
            self.published, self.delivered, self.lost, self.reconnects, self.reconnect_tries
        )
    }
}

impl DatagramCounts {
    /// Whether every token arrived.
    pub fn complete(&self) -> bool {
        self.delivered == self.sent
    }
}
