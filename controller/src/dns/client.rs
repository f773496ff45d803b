//! One signed exchange with the platform's DNS server, over TCP.
//!
//! TCP rather than UDP: an update must not be sent twice by a lost reply
//! and a resend (RFC 2136 updates are not all idempotent), answers are
//! never truncated, and the server's answer comes on the connection the
//! request went out on. Every answer is checked before it is returned: its
//! id, that it answers this opcode, and its TSIG signature.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DnsError;
use super::tsig::{TsigError, TsigKey};
use super::wire::{Message, rcode};

/// Talks to one authoritative server with one key.
#[derive(Clone, Debug)]
pub struct DnsClient {
    pub server: SocketAddr,
    pub key: TsigKey,
    /// The whole exchange (connect, send, answer) gives up after this.
    pub timeout: Duration,
}

impl DnsClient {
    /// Sends `message` (its id replaced by a random one) signed, and
    /// returns the verified answer. The answer's rcode is the caller's to
    /// judge, except a refused signature, which is [`DnsError::Key`].
    pub async fn exchange(&self, mut message: Message) -> Result<Message, DnsError> {
        message.id = random_id();
        let (request, request_mac) = self
            .key
            .sign(&message, SystemTime::now())
            .map_err(|error| DnsError::Request(error.to_string()))?;
        let bytes = tokio::time::timeout(self.timeout, self.send(&request))
            .await
            .map_err(|_| DnsError::Timeout {
                server: self.server,
                secs: self.timeout.as_secs_f64(),
            })??;
        let bad = |what: String| DnsError::BadAnswer {
            server: self.server,
            what,
        };
        let answer = Message::parse(&bytes).map_err(|error| bad(error.to_string()))?;
        if answer.id != message.id || !answer.response || answer.opcode != message.opcode {
            return Err(bad("it does not answer the request sent".into()));
        }
        match self
            .key
            .verify(&bytes, &answer, &request_mac, SystemTime::now())
        {
            Ok(()) => Ok(answer),
            Err(TsigError::Refused(code)) => Err(self.key_error(code)),
            Err(TsigError::Unsigned) if answer.rcode == rcode::NOTAUTH => {
                Err(self.key_error(rcode::NOTAUTH))
            }
            Err(TsigError::Unsigned) => Err(bad(format!(
                "it is not signed (code {}); the server must know key {}",
                rcode::name(answer.rcode),
                self.key.name
            ))),
            Err(error) => Err(bad(error.to_string())),
        }
    }

    fn key_error(&self, code: u16) -> DnsError {
        DnsError::Key {
            server: self.server,
            key: self.key.name.to_string(),
            code: rcode::name(code),
        }
    }

    async fn send(&self, request: &[u8]) -> Result<Vec<u8>, DnsError> {
        let io = |source: std::io::Error| DnsError::Unreachable {
            server: self.server,
            source,
        };
        let mut stream = TcpStream::connect(self.server).await.map_err(io)?;
        let len = u16::try_from(request.len())
            .map_err(|_| DnsError::Request("message longer than 65535 bytes".into()))?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await.map_err(io)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(io)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.map_err(io)?;
        Ok(answer)
    }
}

/// A message id nobody can guess (RFC 5452's advice, cheap here).
fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u16::from_be_bytes(bytes)
}
