//! The provider that routes failover addresses: the pluggable part of a
//! routed move.
//!
//! # Contract
//!
//! A provider is anything that implements [`Provider`]: given an address
//! and the main address of the host that now holds it, make the network
//! deliver the address's traffic to that host, and return once it does (or
//! once the provider accepted the change, when it cannot tell). Calls carry
//! the move's operation id, are repeated when a move is retried, and must
//! be idempotent: routing an address where it already goes succeeds.
//!
//! The one provider built in, [`HttpProvider`], speaks the shape of
//! Hetzner's Robot failover call:
//!
//! ```text
//! POST <url>/failover/<address>
//! Content-Type: application/x-www-form-urlencoded
//! Authorization: Basic ...          (when `user` is configured)
//! X-Navette-Operation: <operation id>
//!
//! active_server_ip=<main address>
//! ```
//!
//! Any 2xx answer means done; anything else is a failure whose status
//! line and first bytes of body are reported to the operator. Plain HTTP
//! only for now (the rig's stand-in and a provider's local relay); a
//! provider on the internet needs HTTPS, which is not built yet.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config;

/// Why the provider did not route the address.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "no provider is configured ([addresses.provider] in the controller's configuration): routed moves need one"
    )]
    NotConfigured,
    #[error("provider URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("reading the provider's password file {path}: {source}")]
    Password {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("calling the provider at {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the provider refused: {0}")]
    Refused(String),
}

type Routed<'a> = Pin<Box<dyn Future<Output = Result<(), ProviderError>> + Send + 'a>>;

/// Routes failover addresses (the contract above).
pub trait Provider: Send + Sync {
    fn route<'a>(
        &'a self,
        address: IpAddr,
        main_address: IpAddr,
        operation_id: &'a str,
    ) -> Routed<'a>;
}

/// The provider the configuration names, if any.
pub fn from_config(config: Option<&config::Provider>) -> Result<Box<dyn Provider>, ProviderError> {
    let config = config.ok_or(ProviderError::NotConfigured)?;
    Ok(Box::new(HttpProvider::new(config)?))
}

/// `POST <url>/failover/<address>` over plain HTTP/1.1.
#[derive(Clone, Debug)]
pub struct HttpProvider {
    /// `host:port` to connect to.
    endpoint: String,
    /// `host[:port]` for the Host header.
    authority: String,
    /// The URL's path, without a trailing `/`.
    prefix: String,
    /// `Basic ...`, when configured.
    authorization: Option<String>,
    timeout: Duration,
}

impl HttpProvider {
    pub fn new(config: &config::Provider) -> Result<HttpProvider, ProviderError> {
        let bad = |reason| ProviderError::BadUrl {
            url: config.url.clone(),
            reason,
        };
        let rest = config
            .url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("give a host and port, no user in the URL"));
        }
        let endpoint = if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let authorization = match &config.user {
            None => None,
            Some(user) => {
                let password = match &config.password_file {
                    None => String::new(),
                    Some(path) => std::fs::read_to_string(path)
                        .map_err(|source| ProviderError::Password {
                            path: path.display().to_string(),
                            source,
                        })?
                        .trim_end()
                        .to_owned(),
                };
                Some(format!(
                    "Basic {}",
                    base64(format!("{user}:{password}").as_bytes())
                ))
            }
        };
        Ok(HttpProvider {
            endpoint,
            authority: authority.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
            authorization,
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
        })
    }

    /// The request's bytes.
    fn request(&self, address: IpAddr, main_address: IpAddr, operation_id: &str) -> String {
        let body = format!(
            "active_server_ip={}",
            form_escape(&main_address.to_string())
        );
        let mut request = format!(
            "POST {}/failover/{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\nX-Navette-Operation: {}\r\n",
            self.prefix,
            address,
            self.authority,
            body.len(),
            operation_id
        );
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        request
    }

    async fn call(
        &self,
        address: IpAddr,
        main_address: IpAddr,
        operation_id: &str,
    ) -> Result<(), ProviderError> {
        let io = |source| ProviderError::Io {
            endpoint: self.endpoint.clone(),
            source,
        };
        let mut stream = tokio::net::TcpStream::connect(&self.endpoint)
            .await
            .map_err(io)?;
        stream
            .write_all(self.request(address, main_address, operation_id).as_bytes())
            .await
            .map_err(io)?;
        let mut answer = Vec::new();
        // Connection: close, so the answer ends with the stream; 64 KiB is
        // more than any status line and error a provider sends.
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        check_answer(&answer)
    }
}

impl Provider for HttpProvider {
    fn route<'a>(
        &'a self,
        address: IpAddr,
        main_address: IpAddr,
        operation_id: &'a str,
    ) -> Routed<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.call(address, main_address, operation_id))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Timeout(self.timeout)),
            }
        })
    }
}

/// A 2xx status line is success; anything else is the provider's refusal,
/// in its words.
fn check_answer(answer: &[u8]) -> Result<(), ProviderError> {
    let text = String::from_utf8_lossy(answer);
    let status_line = text.lines().next().unwrap_or("");
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if status_line.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2') {
        return Ok(());
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    let body: String = body.trim().chars().take(200).collect();
    Err(ProviderError::Refused(if status_line.is_empty() {
        "an empty answer".to_owned()
    } else {
        format!("{status_line}: {body}")
    }))
}

/// `application/x-www-form-urlencoded` for an IP address (`:` is the only
/// character that needs it).
fn form_escape(text: &str) -> String {
    text.replace(':', "%3A")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> config::Provider {
        config::Provider {
            url: url.to_owned(),
            user: None,
            password_file: None,
            timeout_secs: 5,
        }
    }

    #[test]
    fn the_request_is_hetzners_failover_call() -> Result<(), ProviderError> {
        let provider = HttpProvider::new(&config("http://127.0.0.1:8480/robot/"))?;
        let request = provider.request(
            "2001:db8:3::30"
                .parse()
                .map_err(|_| ProviderError::NotConfigured)?,
            "2001:db8::21"
                .parse()
                .map_err(|_| ProviderError::NotConfigured)?,
            "m1",
        );
        assert!(
            request.starts_with("POST /robot/failover/2001:db8:3::30 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nactive_server_ip=2001%3Adb8%3A%3A21"));
        assert!(request.contains("X-Navette-Operation: m1\r\n"));
        assert_eq!(provider.endpoint, "127.0.0.1:8480");
        Ok(())
    }

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(HttpProvider::new(&config("https://robot-ws.your-server.de")).is_err());
        assert!(HttpProvider::new(&config("http:///failover")).is_err());
        assert!(HttpProvider::new(&config("http://provider.example")).is_ok());
    }

    #[test]
    fn two_hundreds_succeed_and_the_rest_say_why() {
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\n{}").is_ok());
        assert!(check_answer(b"HTTP/1.0 202 Accepted\r\n\r\n").is_ok());
        let refused = check_answer(b"HTTP/1.1 409 Conflict\r\n\r\nFAILOVER_LOCKED\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            refused,
            "the provider refused: HTTP/1.1 409 Conflict: FAILOVER_LOCKED"
        );
        assert!(check_answer(b"").is_err());
    }

    #[test]
    fn basic_authentication_is_base64() {
        assert_eq!(base64(b"navette:secret"), "bmF2ZXR0ZTpzZWNyZXQ=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
