//! Reading a daemon's `/metrics` the way a Prometheus server does: a plain
//! HTTP/1.1 GET over a TCP socket opened inside a host's namespace, and the
//! text format read back into samples.
//!
//! Owns only the client side and the parsing; knows nothing of which
//! metrics exist (the tests say what they expect).

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::netns::Netns;

/// One scrape's answer.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The `Content-Type` the server sent.
    pub content_type: String,
    /// The body, as sent.
    pub text: String,
}

/// `GET /metrics` on `addr`, from inside `from`.
pub fn scrape(from: &Netns, addr: SocketAddrV4) -> anyhow::Result<Scrape> {
    let answer = from
        .in_namespace(|| -> anyhow::Result<Vec<u8>> {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(5))
                    .with_context(|| format!("connecting to {addr}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(15)))?;
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        })?
        .with_context(|| format!("scraping http://{addr}/metrics"))?;
    let answer = String::from_utf8(answer).context("the metrics answer is not UTF-8")?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("http://{addr}/metrics: no end of headers in {answer:?}");
    };
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("http://{addr}/metrics answered {status:?}: {body}");
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        bail!("http://{addr}/metrics: a chunked answer (this client reads plain bodies only)");
    }
    Ok(Scrape {
        content_type: header("content-type").unwrap_or_default(),
        text: body.to_owned(),
    })
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`
    /// (in any order); `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples().into_iter().find_map(|sample| {
            let same = sample.name == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v));
            same.then_some(sample.value)
        })
    }

    /// Every sample, comments left out.
    pub fn samples(&self) -> Vec<Sample> {
        self.text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(Sample::parse)
            .collect()
    }
}

/// One line of the text format: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Reads one sample line; `None` when it is not one. Label values are
    /// read with the format's escapes (`\\`, `\"`, `\n`).
    pub fn parse(line: &str) -> Option<Sample> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().ok()?,
        };
        let Some((name, rest)) = series.split_once('{') else {
            return Some(Sample {
                name: series.to_owned(),
                labels: Vec::new(),
                value,
            });
        };
        let body = rest.strip_suffix('}')?;
        let mut labels = Vec::new();
        let mut chars = body.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            if chars.next() != Some('"') {
                return None;
            }
            let mut text = String::new();
            loop {
                match chars.next()? {
                    '\\' => match chars.next()? {
                        'n' => text.push('\n'),
                        other => text.push(other),
                    },
                    '"' => break,
                    other => text.push(other),
                }
            }
            labels.push((key.trim_start_matches(',').to_owned(), text));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        Some(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let scrape = Scrape {
            content_type: String::new(),
            text: "# HELP x_total X.\n# TYPE x_total counter\nx_total{engine=\"files\",why=\"a \\\"b\\\"\"} 12\nup 1\nh_bucket{le=\"+Inf\"} 3\n".to_owned(),
        };
        assert_eq!(
            scrape.value("x_total", &[("why", "a \"b\""), ("engine", "files")]),
            Some(12.0)
        );
        assert_eq!(scrape.value("x_total", &[("engine", "files")]), None);
        assert_eq!(scrape.value("up", &[]), Some(1.0));
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), Some(3.0));
        assert_eq!(scrape.samples().len(), 3);
    }
}
