/*!
The kernel's own socket table, through sock_diag netlink (what `ss` reads):
the ground truth reconciliation checks the event stream against, and how
cwatch finds the sockets that were already in CLOSE_WAIT before it started.

A sock_diag socket answers for the network namespace it was created in; see
[`super::netns`] for reaching the others. [`destroy`] is the one request
that changes anything (`SOCK_DESTROY`, sent only by `cwatch reap --yes`,
never by the daemon).
*/
use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SOCK_DESTROY, SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    /// `tcp_state` number.
    pub state: u8,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Inode of the socket (`socket:[N]`); 0 when it has no file (still in
    /// the accept queue, or orphaned).
    pub inode: u64,
    pub uid: u32,
    /// tcp_info's `tcpi_last_ack_recv`: how long ago the last ACK arrived.
    pub last_ack_recv: Option<Duration>,
    /// Time left on the keepalive timer when SO_KEEPALIVE is armed.
    pub keepalive: Option<Duration>,
}

/// Offset of `tcpi_last_ack_recv` (u32, ms) in `struct tcp_info`: eight
/// one-byte fields, then u32s rto, ato, snd_mss, rcv_mss, unacked, sacked,
/// lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv.
const TCPI_LAST_ACK_RECV: usize = 8 + 4 * 12;

/// Every TCP socket (IPv4 and IPv6) in `states` in this thread's network
/// namespace, with tcp_info (`last_ack_recv`).
pub fn dump(states: StateFlags) -> io::Result<Vec<DiagSocket>> {
    dump_with(states, ExtensionFlags::INFO)
}

/// Like [`dump`], asking for `extensions` only: without tcp_info the kernel
/// sends a third of the bytes (`last_ack_recv` is then `None`).
pub fn dump_with(states: StateFlags, extensions: ExtensionFlags) -> io::Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        request(&socket, family, states, extensions)?;
        receive(&socket, &mut out)?;
    }
    Ok(out)
}

/// Every TCP socket in CLOSE_WAIT in this thread's network namespace.
pub fn close_wait() -> io::Result<Vec<DiagSocket>> {
    dump(StateFlags::CLOSE_WAIT)
}

/// The one TCP socket with these ends and this cookie in this thread's
/// network namespace (a single exact request, not a dump): what `ss` would
/// show of it, or `None` when there is none (or another socket has these
/// ends now). Used for a few sockets at a time.
pub fn lookup(local: SocketAddr, peer: SocketAddr, cookie: u64) -> io::Result<Option<DiagSocket>> {
    let message = exact(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, local, peer, cookie)?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            Ok(Some(from_response(&response)))
        }
        NetlinkPayload::Error(err) => match err.to_io() {
            e if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => Ok(None),
            e => Err(e),
        },
        _ => Ok(None),
    }
}

/// Destroys the one TCP socket with these ends and this cookie in this
/// thread's network namespace (`SOCK_DESTROY`, what `ss -K` sends): the
/// kernel aborts it (a RST to the peer, state CLOSE), whatever fd holds it
/// stays open. `Ok(false)` when no such socket is there any more; the error
/// `EOPNOTSUPP` when the kernel was built without
/// `CONFIG_INET_DIAG_DESTROY`, `EPERM` without `CAP_NET_ADMIN`.
pub fn destroy(local: SocketAddr, peer: SocketAddr, cookie: u64) -> io::Result<bool> {
    let message = exact(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, local, peer, cookie)?;
    match message.payload {
        NetlinkPayload::Error(err) if err.code.is_none() => Ok(true),
        NetlinkPayload::Error(err) => match err.to_io() {
            e if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => Ok(false),
            e => Err(e),
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer to SOCK_DESTROY: {other:?}"),
        )),
    }
}

/// One request of `kind` for exactly the socket with these ends and this
/// cookie, and the kernel's one answer (the socket, or an error or ack;
/// no end-of-dump message).
fn exact(
    kind: u16,
    flags: u16,
    local: SocketAddr,
    peer: SocketAddr,
    cookie: u64,
) -> io::Result<NetlinkMessage<SockDiagMessage>> {
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    id.source_address = local.ip();
    id.source_port = local.port();
    id.destination_address = peer.ip();
    id.destination_port = peer.port();
    // The kernel answers only for this very socket (two native-endian u32,
    // low half first); a zero cookie would be a mismatch (ESTALE), not a
    // wildcard (that is all ones).
    let (low, high) = (
        (cookie as u32).to_ne_bytes(),
        ((cookie >> 32) as u32).to_ne_bytes(),
    );
    id.cookie = [
        low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3],
    ];
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut packet = message(
        flags,
        family,
        StateFlags::all(),
        ExtensionFlags::empty(),
        id,
    );
    packet.header.message_type = kind;
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let mut buf = vec![0u8; 8 << 10];
    let size = socket.recv(&mut &mut buf[..], 0)?;
    NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..size.min(buf.len())])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

fn request(
    socket: &Socket,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
) -> io::Result<()> {
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    send(
        socket,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        states,
        extensions,
        socket_id,
    )
}

fn send(
    socket: &Socket,
    flags: u16,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    socket_id: SocketId,
) -> io::Result<()> {
    let packet = message(flags, family, states, extensions, socket_id);
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    Ok(())
}

/// A finalized `SOCK_DIAG_BY_FAMILY` request for TCP.
fn message(
    flags: u16,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    socket_id: SocketId,
) -> NetlinkMessage<SockDiagMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    packet
}

fn receive(socket: &Socket, out: &mut Vec<DiagSocket>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        if parse_batch(&buf[..size.min(buf.len())], out)? {
            return Ok(());
        }
    }
}

/// One `recv()` worth of netlink messages: the sockets they carry go to
/// `out`; `Ok(true)` once the dump's `NLMSG_DONE` is seen. Bytes that are
/// not netlink (or not sock_diag) are an `InvalidData` error, never a
/// panic: this is the parse half of [`dump`], tested on hostile bytes.
pub fn parse_batch(bytes: &[u8], out: &mut Vec<DiagSocket>) -> io::Result<bool> {
    let mut offset = 0;
    while offset < bytes.len() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&bytes[offset..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let length = message.header.length as usize;
        match message.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(err) => {
                return Err(err.to_io());
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                out.push(from_response(&response));
            }
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(false)
}

fn from_response(response: &InetResponse) -> DiagSocket {
    let header = &response.header;
    let id = &header.socket_id;
    let low = u32::from_ne_bytes([id.cookie[0], id.cookie[1], id.cookie[2], id.cookie[3]]);
    let high = u32::from_ne_bytes([id.cookie[4], id.cookie[5], id.cookie[6], id.cookie[7]]);
    let last_ack_recv = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(raw) => raw
            .get(TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4)
            .map(|b| {
                Duration::from_millis(u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
            }),
        _ => None,
    });
    let keepalive = match header.timer {
        Some(netlink_packet_sock_diag::inet::Timer::KeepAlive(left)) => Some(left),
        _ => None,
    };
    DiagSocket {
        cookie: u64::from(low) | (u64::from(high) << 32),
        state: header.state,
        local: SocketAddr::new(user_ip(id.source_address), id.source_port),
        peer: SocketAddr::new(user_ip(id.destination_address), id.destination_port),
        inode: u64::from(header.inode),
        uid: header.uid,
        last_ack_recv,
        keepalive,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, as everywhere in cwatch.
fn user_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
