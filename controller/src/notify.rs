//! systemd readiness notification (`Type=notify`): a datagram to
//! `$NOTIFY_SOCKET`. Does nothing when not started by systemd.

use std::os::unix::net::UnixDatagram;

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(error) = result {
        tracing::warn!(message = "could not notify systemd", state, %error);
    }
}

/// Tells systemd the controller is serving.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// Tells systemd the controller is stopping.
pub fn stopping() {
    send("STOPPING=1");
}
