//! A session that reads `COPY ... TO STDOUT` in bulk, for the big tables.
//!
//! tokio-postgres hands COPY output over as one reference-counted buffer
//! per row, parsed and dropped one at a time: for the 5,000,000 rows of a
//! pgbench table at scale 50 that is a fifth of a core-second on each side
//! of a copy, on a machine where every core-second is shared with the two
//! database servers. Here the protocol's messages are parsed straight out
//! of large reads and each row's bytes are appended to the caller's chunk.
//!
//! Only what copies need: the startup with the configured (super)user,
//! authentication by trust or peer, password, MD5 or SCRAM-SHA-256 (no TLS:
//! like every session of the agent, it talks to a server of this host),
//! simple queries whose results are not needed, and `COPY ... TO STDOUT`.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use prost::bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::PostgresqlServer;

/// How long connecting and authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 256 * 1024;

/// Why a bulk session failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connecting to PostgreSQL at {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to PostgreSQL took more than {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("the connection to PostgreSQL failed")]
    Io(#[from] io::Error),
    #[error("PostgreSQL: {severity}: {message} (SQLSTATE {code})")]
    Server {
        severity: String,
        code: String,
        message: String,
    },
    #[error(
        "PostgreSQL asks for {0} authentication, which the agent's bulk sessions do not speak: \
         use trust or peer (socket), password, md5 or scram-sha-256 for the agent's user"
    )]
    Authentication(String),
    #[error("PostgreSQL asks for a password and the server's configuration has none")]
    NoPassword,
    #[error("SCRAM-SHA-256 authentication failed")]
    Scram(#[source] io::Error),
    #[error("unexpected PostgreSQL message {0:?}")]
    Unexpected(char),
}

impl WireError {
    /// The server's SQLSTATE, if the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            WireError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One session, between statements or inside a `COPY TO`.
pub struct BulkSession {
    stream: Pin<Box<dyn Io>>,
    /// What was read and not parsed yet.
    input: BytesMut,
    output: BytesMut,
    /// Inside a COPY: CopyData messages are rows.
    copying: bool,
}

impl BulkSession {
    /// Connects to `database` of `server` as its configured user, and runs
    /// `settings` (simple statements).
    pub async fn connect(
        server: &PostgresqlServer,
        database: &str,
        settings: &str,
    ) -> Result<BulkSession, WireError> {
        let mut session = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let stream: Pin<Box<dyn Io>> = if server.uses_socket() {
                let path = format!("{}/.s.PGSQL.{}", server.host, server.port);
                let socket = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| WireError::Connect {
                        address: path,
                        source,
                    })?;
                Box::pin(socket)
            } else {
                let address = format!("{}:{}", server.host, server.port);
                let socket = tokio::net::TcpStream::connect(&address)
                    .await
                    .map_err(|source| WireError::Connect { address, source })?;
                socket.set_nodelay(true)?;
                Box::pin(socket)
            };
            let mut session = BulkSession {
                stream,
                input: BytesMut::with_capacity(READ_SIZE),
                output: BytesMut::new(),
                copying: false,
            };
            session.start(server, database).await?;
            Ok::<_, WireError>(session)
        })
        .await
        .map_err(|_| WireError::ConnectTimeout)??;
        session.execute(settings).await?;
        Ok(session)
    }

    async fn start(&mut self, server: &PostgresqlServer, database: &str) -> Result<(), WireError> {
        frontend::startup_message(
            [
                ("user", server.user.as_str()),
                ("database", database),
                ("application_name", "navette-agent copy"),
                ("client_encoding", "UTF8"),
            ],
            &mut self.output,
        )?;
        self.flush().await?;
        let password = server.password.as_deref().filter(|p| !p.is_empty());
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'R' => {
                    let mut body = &body[..];
                    let kind = read_i32(&mut body)?;
                    match kind {
                        0 => {}
                        3 => {
                            let password = password.ok_or(WireError::NoPassword)?;
                            frontend::password_message(password.as_bytes(), &mut self.output)?;
                            self.flush().await?;
                        }
                        5 => {
                            let password = password.ok_or(WireError::NoPassword)?;
                            let salt: [u8; 4] = body
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or(WireError::Unexpected('R'))?;
                            let hash = md5_hash(server.user.as_bytes(), password.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut self.output)?;
                            self.flush().await?;
                        }
                        10 => {
                            let password = password.ok_or(WireError::NoPassword)?;
                            let offers_scram = body
                                .split(|b| *b == 0)
                                .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(WireError::Authentication(
                                    String::from_utf8_lossy(body).replace('\0', " "),
                                ));
                            }
                            let exchange = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                exchange.message(),
                                &mut self.output,
                            )?;
                            self.flush().await?;
                            scram = Some(exchange);
                        }
                        11 => {
                            let exchange = scram.as_mut().ok_or(WireError::Unexpected('R'))?;
                            exchange.update(body).map_err(WireError::Scram)?;
                            frontend::sasl_response(exchange.message(), &mut self.output)?;
                            self.flush().await?;
                        }
                        12 => {
                            let exchange = scram.as_mut().ok_or(WireError::Unexpected('R'))?;
                            exchange.finish(body).map_err(WireError::Scram)?;
                        }
                        other => {
                            return Err(WireError::Authentication(format!("method {other}")));
                        }
                    }
                }
                b'Z' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                // Parameter status, backend key, notices.
                _ => {}
            }
        }
    }

    /// Runs simple statements and waits for them all.
    pub async fn execute(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.output)?;
        self.flush().await?;
        let mut failed = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'Z' => return failed.map_or(Ok(()), Err),
                b'E' => failed = Some(server_error(&body)),
                // A COPY in a statement list is refused: this session only
                // reads COPY output through `copy_out`.
                b'H' | b'G' => return Err(WireError::Unexpected(tag as char)),
                _ => {}
            }
        }
    }

    /// Starts a `COPY ... TO STDOUT`; its rows are then read with
    /// [`read_rows`](Self::read_rows).
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.output)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'H' => {
                    self.copying = true;
                    return Ok(());
                }
                b'E' => {
                    let error = server_error(&body);
                    self.wait_ready().await?;
                    return Err(error);
                }
                b'Z' => return Err(WireError::Unexpected('Z')),
                _ => {}
            }
        }
    }

    /// Appends whole rows of the COPY to `out`, at least `at_least` bytes
    /// unless the COPY ends first; `false` once it has ended (and the
    /// session is ready for another statement).
    pub async fn read_rows(
        &mut self,
        out: &mut Vec<u8>,
        at_least: usize,
    ) -> Result<bool, WireError> {
        let goal = out.len().saturating_add(at_least.max(1));
        while self.copying {
            // Every complete message in the buffer.
            let mut at = 0;
            let input = &self.input[..];
            let mut ended = None;
            while input.len() - at >= 5 {
                let tag = input[at];
                let length = u32::from_be_bytes([
                    input[at + 1],
                    input[at + 2],
                    input[at + 3],
                    input[at + 4],
                ]) as usize;
                if length < 4 {
                    return Err(WireError::Unexpected(tag as char));
                }
                if input.len() - at < 1 + length {
                    break;
                }
                let body = &input[at + 5..at + 1 + length];
                at += 1 + length;
                match tag {
                    b'd' => {
                        out.extend_from_slice(body);
                        if out.len() >= goal {
                            break;
                        }
                    }
                    b'c' => {}
                    b'C' => {
                        ended = Some(Ok(()));
                        break;
                    }
                    b'E' => {
                        ended = Some(Err(server_error(body)));
                        break;
                    }
                    // Notices and parameter changes.
                    b'N' | b'S' | b'A' => {}
                    other => return Err(WireError::Unexpected(other as char)),
                }
            }
            self.input.advance(at);
            if let Some(ended) = ended {
                self.copying = false;
                self.wait_ready().await?;
                ended?;
                return Ok(false);
            }
            if out.len() >= goal {
                return Ok(true);
            }
            self.fill().await?;
        }
        Ok(false)
    }

    async fn wait_ready(&mut self) -> Result<(), WireError> {
        loop {
            let (tag, _) = self.message().await?;
            if tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// The next whole message: its tag and body.
    async fn message(&mut self) -> Result<(u8, BytesMut), WireError> {
        loop {
            if self.input.len() >= 5 {
                let length = u32::from_be_bytes([
                    self.input[1],
                    self.input[2],
                    self.input[3],
                    self.input[4],
                ]) as usize;
                if length < 4 {
                    return Err(WireError::Unexpected(self.input[0] as char));
                }
                if self.input.len() > length {
                    let mut message = self.input.split_to(1 + length);
                    let tag = message[0];
                    message.advance(5);
                    return Ok((tag, message));
                }
            }
            self.fill().await?;
        }
    }

    /// Reads more from the server; the end of the stream is an error.
    async fn fill(&mut self) -> Result<(), WireError> {
        self.input.reserve(READ_SIZE);
        let read = self.stream.read_buf(&mut self.input).await?;
        if read == 0 {
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        let output = self.output.split();
        self.stream.write_all(&output).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

fn read_i32(body: &mut &[u8]) -> Result<i32, WireError> {
    if body.len() < 4 {
        return Err(WireError::Unexpected('R'));
    }
    Ok(body.get_i32())
}

/// An ErrorResponse's severity, SQLSTATE and message.
fn server_error(body: &[u8]) -> WireError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    WireError::Server {
        severity,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_read() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0\0";
        let error = server_error(body);
        assert_eq!(error.code(), Some("42P01"));
        assert_eq!(
            error.to_string(),
            "PostgreSQL: ERROR: relation \"x\" does not exist (SQLSTATE 42P01)"
        );
    }
}
