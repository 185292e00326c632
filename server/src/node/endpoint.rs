//! The QUIC endpoints: the main one on the node's runtime, the premium one on a thread of
//! its own at raised priority; accepting connections (bounded) and their streams.

use telemetry::ClientRefusal;

use super::*;

/// Starts the premium endpoint: a thread at `nice` running a single-threaded runtime that
/// owns the endpoint, so premium connections are read, answered and written there.
pub(super) fn start_premium(
    addr: SocketAddr,
    (nice, slice_us): (i32, u32),
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
) -> Result<PremiumEndpoint, StartError> {
    // Everything that can fail happens here, on the caller's thread; the endpoint's driver
    // is spawned onto the premium runtime and runs once the thread drives it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::PremiumThread)?;
    let endpoint = {
        let _in = rt.enter();
        server_endpoint(addr, bind_udp(addr)?, server)?
    };
    let driven = endpoint.clone();
    let thread = std::thread::Builder::new()
        .name("eq-premium".into())
        .spawn(move || {
            let slice = (slice_us > 0).then(|| Duration::from_micros(u64::from(slice_us)));
            let raised = priority::raise_this_thread(nice, slice);
            if let Some(why) = raised.refusal() {
                warn!(
                    nice,
                    slice_us,
                    "premium endpoint: its thread's priority was not raised as configured ({why}); \
                     a negative nice needs root or CAP_SYS_NICE, a slice Linux 6.12+"
                );
            }
            let priority = format!(
                "nice {}, slice {}",
                priority::this_thread_nice(),
                priority::this_thread_slice()
                    .map(|s| format!("{} us", s.as_micros()))
                    .unwrap_or_else(|| "unknown".into())
            );
            if let Ok(a) = driven.local_addr() {
                info!(addr = %a, %priority, "premium endpoint: premium-tier clients only, on a thread of its own");
            }
            rt.block_on(async move {
                accept_loop(driven.clone(), shared, true).await;
                driven.wait_idle().await;
            });
        })
        .map_err(StartError::PremiumThread)?;
    Ok(PremiumEndpoint {
        endpoint,
        thread: Some(thread),
    })
}

pub(super) fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    std::net::UdpSocket::bind(addr).map_err(|source| StartError::Bind { addr, source })
}

/// A QUIC server endpoint on a bound socket, driven by the current tokio runtime.
pub(super) fn server_endpoint(
    addr: SocketAddr,
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, StartError> {
    let bind = |source| StartError::Bind { addr, source };
    let runtime =
        quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no tokio runtime")))?;
    quinn::Endpoint::new(Default::default(), Some(server), socket, runtime).map_err(bind)
}

/// Accepts connection attempts as the guard decides: a stateless Retry while unvalidated
/// handshakes pile up, a refusal beyond a bound or from a backed-off address, otherwise a
/// handshake that must complete within `handshake_timeout_ms`.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    premium_only: bool,
) {
    let handshake_timeout = Duration::from_millis(shared.limits.handshake_timeout_ms);
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let decision = shared.guard.admit(
            remote,
            incoming.remote_address_validated(),
            incoming.may_retry(),
        );
        let ticket = match decision {
            Admit::Accept(ticket) => ticket,
            Admit::Retry => {
                shared.metrics.guard.retries.inc();
                if incoming.retry().is_err() {
                    debug!(%remote, "retry refused by quinn");
                }
                continue;
            }
            Admit::Refuse(why) => {
                shared.guard.refused(
                    why,
                    remote,
                    "connection refused: a client-facing bound is reached",
                );
                incoming.refuse();
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, incoming).await {
                Ok(Ok(conn)) => serve_connection(shared, conn, premium_only, ticket).await,
                Ok(Err(e)) => debug!(%remote, "handshake failed: {e}"),
                Err(_) => shared.guard.refused(
                    ClientRefusal::HandshakeTimeout,
                    remote,
                    "handshake not completed within handshake_timeout_ms: abandoned",
                ),
            }
        });
    }
}

/// One connection: at most `streams_before_hello_max` streams read until a `HELLO`
/// succeeds, and closed if none has within `hello_timeout_ms` (or sooner, to make room,
/// when it has waited longest of `unauthenticated_max`).
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    premium_only: bool,
    mut ticket: Ticket,
) {
    let remote = conn.remote_address();
    if let Some(evicted) = ticket.handshake_done(&conn) {
        shared.guard.refused(
            ClientRefusal::UnauthenticatedFull,
            evicted,
            "unauthenticated_max connections await HELLO: closing the one waiting longest",
        );
    }
    let state = Arc::new(Connection {
        remote,
        ticket: std::sync::Mutex::new(Some(ticket)),
        authenticated: tokio::sync::Notify::new(),
        premium_only,
        session: ArcSwapOption::empty(),
        load: ConnectionLoad::default(),
    });
    debug!(%remote, "connection");
    let hello_by =
        tokio::time::Instant::now() + Duration::from_millis(shared.limits.hello_timeout_ms);
    let streams_before_hello_max = shared.limits.streams_before_hello_max;
    let mut streams_before_hello = 0u32;
    loop {
        let authenticated = state.session().is_some();
        let may_accept = authenticated || streams_before_hello < streams_before_hello_max;
        tokio::select! {
            accepted = conn.accept_bi(), if may_accept => match accepted {
                Ok((send, recv)) => {
                    if !authenticated {
                        streams_before_hello += 1;
                    }
                    tokio::spawn(serve_stream(
                        Arc::clone(&shared),
                        Arc::clone(&state),
                        conn.clone(),
                        send,
                        recv,
                    ));
                }
                Err(e) => {
                    debug!("connection ended: {e}");
                    return;
                }
            },
            () = tokio::time::sleep_until(hello_by), if !authenticated => {
                if state.session().is_none() {
                    shared.guard.refused(
                        ClientRefusal::HelloTimeout,
                        remote,
                        "no successful HELLO within hello_timeout_ms: closing the connection",
                    );
                    conn.close(
                        VarInt::from_u32(u32::from(ErrorCode::NotAuthenticated.code())),
                        b"no HELLO within hello_timeout_ms",
                    );
                    return;
                }
            }
            () = state.authenticated.notified(), if !authenticated => {}
            // While no stream is accepted, the connection's end is seen here.
            _ = conn.closed(), if !may_accept => return,
        }
    }
}
