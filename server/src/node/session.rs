//! One stream of a connection: frames read in chunks, each admitted or shed, answered in
//! order, the replies of a chunk written in one write; framing errors end the stream.

use super::*;

pub(super) fn error_frame(
    metrics: &Metrics,
    id: u64,
    code: ErrorCode,
    message: impl Into<String>,
    out: &mut Vec<u8>,
) {
    metrics.requests.error(code);
    protocol::encode(id, &Refusal::new(code, message).into_message(), out);
}

/// What the stream loop does after answering a request.
pub(super) enum After {
    Continue,
    /// A `HELLO` succeeded: the connection gets its full limits.
    Authenticated,
    CloseConnection(ErrorCode),
}

/// Requests of one stream admitted and not yet written back, and the credential they were
/// admitted for.
#[derive(Default)]
struct Held {
    credential: usize,
    n: u32,
}

impl Held {
    /// One more admitted request of `credential`.
    fn hold(&mut self, shared: &Shared, state: &Connection, credential: usize) {
        if self.n > 0 && self.credential != credential {
            // Another credential mid-chunk: what was admitted for the old one is answered
            // already. (A connection's credential never changes since a second HELLO keeps
            // it, so this is a guard: a release is never counted against the wrong one.)
            self.release(shared, state);
        }
        self.credential = credential;
        self.n += 1;
    }

    fn release(&mut self, shared: &Shared, state: &Connection) {
        shared
            .admission
            .release_for(&state.load, self.credential, self.n);
        self.n = 0;
    }
}

pub(super) async fn serve_stream(
    shared: Arc<Shared>,
    state: Arc<Connection>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (limits, before_hello) = frame_limits(&shared);
    let write_timeout = Duration::from_millis(shared.limits.write_timeout_ms);
    let mut authenticated = state.session().is_some();
    let (mut inbuf, mut out, mut chunk) = stream_buffers(authenticated);
    let mut held = Held::default();
    loop {
        // A HELLO on another stream of the connection counts here too.
        authenticated = authenticated || state.session().is_some();
        if authenticated && chunk.len() < STREAM_READ_BYTES {
            chunk.resize(STREAM_READ_BYTES, 0);
        }
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                debug!("stream read: {e}");
                return;
            }
        };
        inbuf.extend_from_slice(&chunk[..n]);
        // Every request of a chunk is answered by the one write at its end: each one's
        // latency is from here to that write. Requests are tallied by op and tier and
        // recorded together, two clock reads per chunk, not per request.
        let read_at = Instant::now();
        let mut tally = [[0u32; TierLabel::ALL.len()]; Op::ALL.len()];
        let mut pos = 0;
        let mut after = After::Continue;
        // One clock read per chunk of frames, not per request.
        let now = now_ms(&shared);
        while inbuf.len() - pos >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] =
                inbuf[pos..pos + HEADER_LEN].try_into().expect("16 bytes");
            let header =
                match Header::parse(head, if authenticated { limits } else { before_hello }) {
                    Ok(h) => h,
                    Err(e) => {
                        refuse_frame(
                            &shared,
                            &state,
                            &conn,
                            head,
                            &e,
                            &mut out,
                            (&mut send, &mut recv),
                        )
                        .await;
                        held.release(&shared, &state);
                        return;
                    }
                };
            let end = pos + HEADER_LEN + header.body_len as usize;
            if inbuf.len() < end {
                break;
            }
            let body = &inbuf[pos + HEADER_LEN..end];
            pos = end;
            // A HELLO, and anything before one, is answered at once without engine work: it
            // takes no in-flight slot (so a squatted shared tier cannot refuse a premium or
            // admin HELLO).
            let session = state.session();
            let admitted_for = match session {
                Some(s) if header.kind != protocol::Kind::Hello as u8 => Some(s),
                _ => None,
            };
            if !admit(&shared, &state, admitted_for, header.request_id, &mut out) {
                continue;
            }
            if let Some(s) = admitted_for {
                held.hold(&shared, &state, s.credential);
            }
            after = answer(&shared, &state, &header, body, now, &mut out).await;
            if let Some(op) = op_of(header.kind) {
                // The tier as authenticated (a request before HELLO counts as shared).
                let tier = session.map(|s| s.tier).unwrap_or(Tier::Shared);
                tally[op as usize][tier_label(tier) as usize] += 1;
            }
            match after {
                After::CloseConnection(_) => break,
                After::Authenticated if !authenticated => {
                    authenticated = true;
                    on_authenticated(&shared, &conn);
                }
                _ => {}
            }
        }
        inbuf.drain(..pos);
        let written =
            write_replies(&shared, &state, &conn, &mut send, &mut out, write_timeout).await;
        held.release(&shared, &state);
        record_latencies(&shared.metrics, &tally, read_at);
        if !written {
            return;
        }
        if let After::CloseConnection(code) = after {
            close_after_reply(&conn, &mut send, code).await;
            return;
        }
    }
    let _ = send.finish();
}

/// A reply write did not complete within `write_timeout_ms`: the client does not read. The
/// connection is closed (application code 30, `overloaded`), which frees its slots.
/// A stream's input, output and read buffers. Until the connection is authenticated they
/// stay small (pre-auth memory is a few KiB); the read buffer grows once after `HELLO`.
fn stream_buffers(authenticated: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (capacity, read_len) = if authenticated {
        (STREAM_BUFFER_BYTES, STREAM_READ_BYTES)
    } else {
        (
            STREAM_BUFFER_BYTES_BEFORE_HELLO,
            STREAM_BUFFER_BYTES_BEFORE_HELLO,
        )
    };
    (
        Vec::with_capacity(capacity),
        Vec::with_capacity(capacity),
        vec![0u8; read_len],
    )
}

/// The frame limits of a stream: once authenticated, and before `HELLO` (a small frame: a
/// `HELLO` fits).
fn frame_limits(shared: &Shared) -> (Limits, Limits) {
    let limits = Limits {
        frame_len_max: shared.limits.frame_len_max,
    };
    let before_hello = Limits {
        frame_len_max: shared
            .limits
            .hello_frame_len_max
            .min(shared.limits.frame_len_max),
    };
    (limits, before_hello)
}

/// Writes a chunk's replies in one write, within `write_timeout` (a client that does not
/// read has its connection closed, freeing its slots). False when the stream is done for.
async fn write_replies(
    shared: &Shared,
    state: &Connection,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    out: &mut Vec<u8>,
    write_timeout: Duration,
) -> bool {
    let written = if out.is_empty() {
        Ok(Ok(()))
    } else {
        tokio::time::timeout(write_timeout, send.write_all(out)).await
    };
    out.clear();
    match written {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            write_timed_out(shared, state, conn);
            false
        }
    }
}

/// A frame whose header is refused: the replies so far and its `ERROR` frame, then the
/// stream ends (`STOP_SENDING` with the code), within `write_timeout_ms`.
async fn refuse_frame(
    shared: &Shared,
    state: &Connection,
    conn: &quinn::Connection,
    head: &[u8; HEADER_LEN],
    e: &protocol::FrameError,
    out: &mut Vec<u8>,
    (send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
) {
    let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    error_frame(&shared.metrics, id, e.code(), e.to_string(), out);
    let write_timeout = Duration::from_millis(shared.limits.write_timeout_ms);
    if tokio::time::timeout(write_timeout, end_stream(e.code(), out, send, recv))
        .await
        .is_err()
    {
        write_timed_out(shared, state, conn);
    }
}

/// Closes the connection with `code` once the reply had a moment to leave.
async fn close_after_reply(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: ErrorCode,
) {
    let _ = send.finish();
    tokio::time::sleep(Duration::from_millis(CLOSE_LINGER_MS)).await;
    conn.close(
        VarInt::from_u32(u32::from(code.code())),
        code.name().as_bytes(),
    );
}

fn write_timed_out(shared: &Shared, state: &Connection, conn: &quinn::Connection) {
    shared.guard.refused(
        telemetry::ClientRefusal::WriteTimeout,
        state.remote,
        "a reply write did not complete within write_timeout_ms (the client does not read): closing the connection",
    );
    conn.close(
        VarInt::from_u32(u32::from(ErrorCode::Overloaded.code())),
        b"reply write timed out",
    );
}

pub(super) fn now_ms(shared: &Shared) -> u64 {
    shared.engine.clock().now_ms()
}

/// Admits a request for `session` (`None`: a `HELLO` or a request before one, which takes
/// no slot), or answers it `shutting_down` (the node is stopping) or `overloaded` (an
/// in-flight bound is reached; the shared tier is shed first) and says so.
fn admit(
    shared: &Shared,
    state: &Connection,
    session: Option<Session>,
    request_id: u64,
    out: &mut Vec<u8>,
) -> bool {
    if shared.stopping.load(Ordering::Acquire) {
        error_frame(
            &shared.metrics,
            request_id,
            ErrorCode::ShuttingDown,
            "node is shutting down",
            out,
        );
        return false;
    }
    let Some(session) = session else {
        return true;
    };
    let tier = session.tier;
    if let Err(why) = shared.admission.try_admit_for(&state.load, session.claim()) {
        if why == crate::admission::Shed::Credential {
            shared
                .metrics
                .guard
                .refuse(telemetry::ClientRefusal::CredentialInFlight);
        }
        shared.metrics.requests.shed[tier_label(tier) as usize].inc();
        error_frame(
            &shared.metrics,
            request_id,
            ErrorCode::Overloaded,
            "too many requests in flight; retry with backoff",
            out,
        );
        return false;
    }
    true
}

/// Framing is lost: send what was answered (ending with the `ERROR` frame), stop reading
/// (`STOP_SENDING` with the code) and finish our side once the answer is delivered, waiting
/// at most `ERROR_DELIVERY_WAIT_MS`.
async fn end_stream(
    code: ErrorCode,
    out: &[u8],
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    let _ = recv.stop(VarInt::from_u32(u32::from(code.code())));
    if send.write_all(out).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(
            Duration::from_millis(ERROR_DELIVERY_WAIT_MS),
            send.stopped(),
        )
        .await;
    }
}

/// Records a chunk's requests, tallied by op and tier, with the latency from the read to the
/// write that answered them all.
fn record_latencies(
    metrics: &Metrics,
    tally: &[[u32; TierLabel::ALL.len()]; Op::ALL.len()],
    read_at: Instant,
) {
    if !tally.iter().flatten().any(|&n| n > 0) {
        return;
    }
    let took = read_at.elapsed();
    for op in Op::ALL {
        for t in TierLabel::ALL {
            let n = tally[op as usize][t as usize];
            metrics
                .requests
                .latency(op, t)
                .observe_n(took, u64::from(n));
        }
    }
}
