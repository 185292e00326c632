//! The QUIC endpoints: the main one on the node's runtime, the premium one on a thread of
//! its own at raised priority; accepting connections (bounded) and their streams.

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

pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    premium_only: bool,
) {
    let open = Arc::clone(&shared.open);
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "connection limit reached: refusing");
            incoming.refuse();
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            match incoming.await {
                Ok(conn) => serve_connection(shared, conn, premium_only).await,
                Err(e) => debug!("handshake failed: {e}"),
            }
        });
    }
}

pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    premium_only: bool,
) {
    let state = Arc::new(Connection {
        premium_only,
        ..Connection::default()
    });
    debug!(remote = %conn.remote_address(), "connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
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
        }
    }
}
