//! Readiness notification to systemd (`Type=notify`): one `READY=1`
//! datagram to `$NOTIFY_SOCKET`, a path or an abstract socket (`@name`).
//!
//! Owns nothing else; without `NOTIFY_SOCKET` it does nothing.

use std::os::unix::net::UnixDatagram;

/// Why the notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot notify systemd through NOTIFY_SOCKET={socket}")]
pub struct NotifyError {
    socket: String,
    #[source]
    source: std::io::Error,
}

/// Tells systemd the agent is ready, when started by systemd with
/// `NOTIFY_SOCKET`. Returns whether a notification was sent.
pub fn notify_ready() -> Result<bool, NotifyError> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => {
            send(&socket, "READY=1\n")?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends `message` to the datagram socket `socket`: a path, or an abstract
/// name when it starts with '@'.
pub fn send(socket: &str, message: &str) -> Result<(), NotifyError> {
    let error = |source| NotifyError {
        socket: socket.to_owned(),
        source,
    };
    let sender = UnixDatagram::unbound().map_err(error)?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(error)?;
        sender
            .send_to_addr(message.as_bytes(), &address)
            .map_err(error)?;
    } else {
        sender.send_to(message.as_bytes(), socket).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(receiver: &UnixDatagram) -> String {
        let mut buffer = [0u8; 64];
        let length = receiver.recv(&mut buffer).expect("datagram");
        String::from_utf8_lossy(&buffer[..length]).into_owned()
    }

    #[test]
    fn ready_reaches_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("navette-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf-8 path"), "READY=1\n").expect("send");
        assert_eq!(receive(&receiver), "READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("navette-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind");
        send(&format!("@{name}"), "READY=1\n").expect("send");
        assert_eq!(receive(&receiver), "READY=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let error = send("/nonexistent/navette/notify.sock", "READY=1\n")
            .expect_err("no such socket")
            .to_string();
        assert!(
            error.contains("/nonexistent/navette/notify.sock"),
            "{error}"
        );
    }
}
