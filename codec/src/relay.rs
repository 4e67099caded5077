//! Tokens relayed through a broker (the fan-out approach's messages): what its API
//! servers publish to a session's channel, and what its WebSocket gateways push to the
//! client. Text, one message each, so that
//! `redis-cli SUBSCRIBE` and a browser's console read them as they are:
//!
//! | on the broker            | to the client            | meaning                          |
//! |--------------------------|--------------------------|----------------------------------|
//! |                          | `r`                      | subscribed: send the prompt      |
//! | `t <seq> <ns> <token>`   | `t <seq> <us> <token>`   | token `seq` (0, 1, ...)          |
//! | `u <tokens>`             | `u <tokens>`             | the upstream's count, if asked   |
//! | `e <count>`              | `e <count>`              | the answer ended after `count`   |
//! | `x <reason>`             | `x <reason>`             | the upstream failed              |
//! | `c`                      | (a close frame)          | the session was deleted          |
//!
//! On the broker, `<ns>` is when the API server published the token, on the machine's
//! monotonic clock (one clock for every namespace of the lab); to the client, `<us>` is
//! the broker hop the gateway measured: its receipt minus that, in microseconds.

/// One message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    Ready,
    /// A token, with its sequence number and a time: the publication's (ns, on the
    /// broker) or the broker hop (µs, to the client).
    Token {
        seq: u64,
        time: u64,
        text: &'a str,
    },
    /// The upstream's count of the answer's tokens (`usage`), where asked for.
    Usage(u64),
    End {
        count: u64,
    },
    Failed(&'a str),
    Closed,
}

impl Msg<'_> {
    /// The message's text.
    pub fn encode(&self) -> String {
        match self {
            Msg::Ready => "r".into(),
            Msg::Token { seq, time, text } => format!("t {seq} {time} {text}"),
            Msg::Usage(n) => format!("u {n}"),
            Msg::End { count } => format!("e {count}"),
            Msg::Failed(why) => format!("x {why}"),
            Msg::Closed => "c".into(),
        }
    }

    /// Parses one message; the error says what was wrong with it.
    pub fn parse(s: &str) -> Result<Msg<'_>, String> {
        let bad = || {
            format!(
                "not a relay message: {:?} (expected r, t <seq> <time> <token>, u <tokens>, e <count>, x <reason> or c)",
                s.chars().take(60).collect::<String>()
            )
        };
        let (kind, rest) = match s.split_once(' ') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        match (kind, rest) {
            ("r", None) => Ok(Msg::Ready),
            ("c", None) => Ok(Msg::Closed),
            ("e", Some(n)) => n.parse().map(|count| Msg::End { count }).map_err(|_| bad()),
            ("u", Some(n)) => n.parse().map(Msg::Usage).map_err(|_| bad()),
            ("x", Some(why)) => Ok(Msg::Failed(why)),
            ("t", Some(r)) => {
                let mut it = r.splitn(3, ' ');
                let seq = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let time = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let text = it.next().ok_or_else(bad)?;
                Ok(Msg::Token { seq, time, text })
            }
            _ => Err(bad()),
        }
    }
}

/// The bytes of the text message `Msg::Token` carrying `token` as the client receives
/// it, less the token: what the relay framing adds to each token.
pub fn token_overhead(seq: u64, hop_us: u64) -> usize {
    format!("t {seq} {hop_us} ").len()
}

/// Whether `id` is a session id as the API servers make them: 32 lower-case hex digits.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_tokens_keep_their_spaces() {
        for m in [
            Msg::Ready,
            Msg::Closed,
            Msg::End { count: 42 },
            Msg::Usage(40),
            Msg::Failed("upstream said 503"),
            Msg::Token {
                seq: 7,
                time: 123,
                text: " hello world ",
            },
            Msg::Token {
                seq: 0,
                time: 0,
                text: "",
            },
        ] {
            assert_eq!(Msg::parse(&m.encode()).unwrap(), m);
        }
        assert_eq!(token_overhead(7, 123), "t 7 123 ".len());
    }

    #[test]
    fn bad_messages_are_named() {
        for s in ["", "q", "t 1", "t x 1 a", "e", "e many", "r now"] {
            let e = Msg::parse(s).unwrap_err();
            assert!(e.contains("not a relay message"), "{s}: {e}");
        }
        assert!(is_session_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_session_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_session_id("../etc"));
    }
}
